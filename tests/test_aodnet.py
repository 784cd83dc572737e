"""AOD-Net arch: structure, parameter count, data ranges, the J = K*I - K + b output, MAC counting."""
import mixcl_arch  # noqa: F401  (registers AODNet, patches basicsr)
import pytest
import torch
from basicsr.archs import build_network

from mixcl_arch.archs.aodnet_arch import AODNet
from mixcl_arch.utils.flops import count_macs, format_count


def test_build_from_yaml_dict_params_and_shapes():
    net = build_network({'type': 'AODNet', 'data_range': 'unit'})
    assert isinstance(net, AODNet)
    assert sum(p.numel() for p in net.parameters()) == 1761
    assert net.num_cond == 0 and net.cond_dim == 512
    shapes = {n: tuple(p.shape) for n, p in net.named_parameters() if n.endswith('weight')}
    assert shapes == {'conv1.weight': (3, 3, 1, 1), 'conv2.weight': (3, 3, 3, 3), 'conv3.weight': (3, 6, 5, 5),
                      'conv4.weight': (3, 6, 7, 7), 'conv5.weight': (3, 12, 3, 3)}
    for h, w in [(17, 23), (64, 48)]:
        out = net(torch.rand(2, 3, h, w))
        assert out.shape == (2, 3, h, w) and out.min() >= 0


def test_output_follows_reformulated_model():
    net = AODNet(b=1.0)
    with torch.no_grad():
        for m in (net.conv1, net.conv2, net.conv3, net.conv4, net.conv5):
            m.weight.zero_()
            m.bias.zero_()
        net.conv5.bias.copy_(torch.tensor([2.0, 1.5, 0.5]))  # K is then constant per channel
    x = torch.rand(1, 3, 9, 9)
    k = torch.tensor([2.0, 1.5, 0.5])[None, :, None, None]
    assert torch.allclose(net(x), torch.relu(k * x - k + 1.0), atol=1e-6)


def test_signed_range_matches_unit():
    unit = AODNet(data_range='unit')
    signed = AODNet(data_range='signed')
    signed.load_state_dict(unit.state_dict())
    x = torch.rand(1, 3, 20, 20)
    assert torch.allclose((signed(x * 2 - 1) + 1) / 2, unit(x), atol=1e-6)
    with pytest.raises(ValueError, match='data_range'):
        AODNet(data_range='0-255')
    with pytest.raises(ValueError, match=r'\(B, 3, H, W\)'):
        unit(torch.rand(1, 4, 8, 8))


def test_macs_both_counters_agree_with_closed_form():
    net = AODNet()
    per_pixel = 3 * (3 * 1 + 3 * 9 + 6 * 25 + 6 * 49 + 12 * 9)  # output channels * (in * kernel area), = 1746
    assert count_macs(net, (1, 3, 32, 40), method='hooks') == per_pixel * 32 * 40
    assert count_macs(net, (1, 3, 32, 40)) == per_pixel * 32 * 40
    assert net.training  # mode restored
    assert format_count(1761) == '1.76K' and format_count(114425856) == '114.43M'
    with pytest.raises(ValueError, match='method'):
        count_macs(net, method='fvcore')


def test_a_few_steps_reduce_loss_on_synthetic_haze():
    torch.manual_seed(0)
    net = AODNet()
    gt = torch.rand(4, 3, 32, 32)
    hazy = gt * 0.6 + 0.4 * 0.9
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss = torch.nn.functional.mse_loss(net(hazy), gt)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
