"""MixDehazeNet / MixCLDehazeNet: registry, shapes, parameter counts, official checkpoints, the lean fusion."""
import math
import os
import subprocess
import sys

import pytest
import torch
import yaml
from basicsr.archs import build_network
from torch.nn import functional as F

from _net_helpers import randomize_bn, unit_text
from mixcl_arch.archs.mixdehazenet_arch import CLIPTextFusion, MixCLDehazeNet, MixDehazeNet, tilted_mean
from mixcl_arch.utils.checkpoint import infer_arch_from_state_dict, load_network_weights

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))
TINY = {'embed_dims': [8, 16, 16, 16, 8], 'depths': [1, 1, 1, 1, 1]}

NETWORK_YAML = """
network_g:
  type: {type}
  variant: {variant}
  data_range: unit
"""


def n_params(net):
    return sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize('arch_type', ['MixDehazeNet', 'MixCLDehazeNet'])
def test_build_from_yaml_through_registry(arch_type):
    opt = yaml.safe_load(NETWORK_YAML.format(type=arch_type, variant='T'))['network_g']
    net = build_network(opt)
    assert type(net).__name__ == arch_type
    assert net.data_range == 'unit'
    assert net.num_cond == (1 if arch_type == 'MixCLDehazeNet' else 0)


def test_explicit_dims_and_depths_override_variant():
    net = build_network({'type': 'MixDehazeNet', 'variant': 'L', **TINY})
    assert net.depths == TINY['depths'] and net.embed_dims == TINY['embed_dims']


@pytest.mark.parametrize('variant,plain,cl', [
    ('T', 1_622_950, 1_623_712),
    ('S', 3_164_944, 3_165_706),
    ('B', 6_248_932, 6_249_694),
    ('L', 12_416_908, 12_417_670),
])
def test_preset_parameter_counts_equal_reference(variant, plain, cl):
    assert n_params(MixDehazeNet(variant)) == plain
    assert n_params(MixCLDehazeNet(variant)) == cl


def test_text_fusion_has_114_parameters_and_6_channel_embed():
    fusion = CLIPTextFusion()
    assert n_params(fusion) == 114
    # only q1, k2.weight, v2 and postProj_s reach the output; the rest are frozen (loadable, ignored by DDP/optim)
    trainable = {n for n, p in fusion.named_parameters() if p.requires_grad}
    assert trainable == {'q1.weight', 'q1.bias', 'k2.weight', 'v2.weight', 'v2.bias', 'postProj_s.weight',
                         'postProj_s.bias'}
    assert tuple(MixCLDehazeNet('T').patch_embed.proj.weight.shape) == (24, 6, 3, 3)


@pytest.mark.parametrize('size', [(1, 1), (3, 200), (41, 17), (45, 61), (64, 64)])
def test_output_shape_any_size(size):
    torch.manual_seed(0)
    x = torch.rand(2, 3, *size)
    plain = MixDehazeNet(**TINY, data_range='unit').eval()
    cl = MixCLDehazeNet(**TINY, data_range='unit').eval()
    with torch.no_grad():
        assert plain(x).shape == x.shape
        y = cl(x, unit_text(2))
    assert y.shape == x.shape and torch.isfinite(y).all()


def test_text_shapes_b512_and_b1_512_agree():
    net = MixCLDehazeNet(**TINY).eval()
    x, t = torch.rand(2, 3, 44, 48), unit_text(2)
    with torch.no_grad():
        assert torch.equal(net(x, t), net(x, t[:, None]))


def test_data_range_unit_is_signed_with_conversion():
    torch.manual_seed(0)
    signed = randomize_bn(MixCLDehazeNet(**TINY, data_range='signed')).eval()
    unit = MixCLDehazeNet(**TINY, data_range='unit').eval()
    unit.load_state_dict(signed.state_dict())
    x, t = torch.rand(1, 3, 40, 44), unit_text(1)
    with torch.no_grad():
        torch.testing.assert_close(unit(x, t), (signed(x * 2 - 1, t) + 1) / 2, atol=1e-5, rtol=0)


def test_multi_condition_builds_extra_fusions():
    net = MixCLDehazeNet(**TINY, num_cond=3).eval()
    assert net.patch_embed.proj.weight.shape[1] == 3 + 3 * 3
    assert len(net.text_emb_extra) == 2
    x = torch.rand(2, 3, 40, 40)
    with torch.no_grad():
        y = net(x, unit_text(2, 3))
        y2 = net(x, torch.cat([unit_text(2, 1), unit_text(2, 2, seed=5)], 1))
    assert y.shape == x.shape
    assert not torch.allclose(y, y2), 'extra conditioning vectors must change the output'
    assert infer_arch_from_state_dict(net.state_dict())['num_cond'] == 3


# ---------------------------------------------------------------- official checkpoints
def save_official(net, path):
    """The original training code's format: DataParallel prefix inside 'state_dict' plus training extras."""
    sd = {'module.' + k: v for k, v in net.state_dict().items()}
    torch.save({'state_dict': sd, 'optimizer': {'state': {}, 'param_groups': []}, 'epoch': 7, 'best_psnr': 30.5}, path)


@pytest.mark.parametrize('arch', ['MixDehazeNet', 'MixCLDehazeNet'])
def test_official_checkpoint_loads_strictly_both_ways(tmp_path, arch):
    torch.manual_seed(1)
    cls = MixCLDehazeNet if arch == 'MixCLDehazeNet' else MixDehazeNet
    src = randomize_bn(cls('T')).eval()
    official = tmp_path / 'official.pth'
    save_official(src, official)
    keys = torch.load(official)['state_dict'].keys()
    assert 'module.layer1.blocks.0.conv3_19.weight' in keys and 'module.fusion1.mlp.0.weight' in keys
    assert 'module.layer3.blocks.1.Wg.1.weight' in keys and 'module.patch_split1.proj.0.weight' in keys
    if arch == 'MixCLDehazeNet':
        assert 'module.text_emb.postProj_t.weight' in keys and 'module.text_emb.q1.weight' in keys

    # 1) directly, whatever param_key says (as the model's path.pretrain_network_g does)
    direct = load_network_weights(cls('T'), official, param_key='params', strict=True).eval()
    # 2) through the conversion script to BasicSR's {'params': ...}
    converted = tmp_path / 'converted.pth'
    subprocess.run([sys.executable, os.path.join(ROOT, 'scripts', 'convert_official_checkpoint.py'), '-i',
                    str(official), '-o', str(converted)], check=True, capture_output=True)
    assert set(torch.load(converted)) == {'params'}
    via_script = load_network_weights(cls('T'), converted, param_key='params', strict=True).eval()

    x = torch.rand(1, 3, 45, 51) * 2 - 1
    args = (x, unit_text(1)) if arch == 'MixCLDehazeNet' else (x, )
    with torch.no_grad():
        ref = src(*args)
        assert torch.equal(direct(*args), ref)
        assert torch.equal(via_script(*args), ref)


def test_checkpoint_with_missing_and_unexpected_keys_lists_them(tmp_path):
    net = MixDehazeNet('T')
    sd = {'module.' + k: v for k, v in net.state_dict().items() if not k.startswith('layer5.')}
    sd['module.bogus.weight'] = torch.zeros(1)
    path = tmp_path / 'broken.pth'
    torch.save({'state_dict': sd}, path)
    with pytest.raises(ValueError) as err:
        load_network_weights(MixDehazeNet('T'), path)
    msg = str(err.value)
    assert 'missing keys (42)' in msg and 'layer5.blocks.0.' in msg
    assert 'unexpected keys (1): bogus.weight' in msg and str(path) in msg


def test_checkpoint_shape_mismatch_names_shapes(tmp_path):
    path = tmp_path / 'plain.pth'
    torch.save({'params': MixDehazeNet('T').state_dict()}, path)
    with pytest.raises(ValueError, match=r'patch_embed.proj.weight: expected \(24, 6, 3, 3\), got \(24, 3, 3, 3\)'):
        load_network_weights(MixCLDehazeNet('T'), path, strict=False)


# ---------------------------------------------------------------- bad input
def test_wrong_channel_count_names_shapes():
    with pytest.raises(ValueError, match=r'\(B, 3, H, W\), got \(1, 4, 40, 40\)'):
        MixDehazeNet(**TINY)(torch.rand(1, 4, 40, 40))


def test_wrong_text_size_names_shapes():
    net = MixCLDehazeNet(**TINY)
    with pytest.raises(ValueError, match=r'expected shape \(2, 512\) or \(2, 1, 512\), got \(2, 256\)'):
        net(torch.rand(2, 3, 40, 40), torch.randn(2, 256))
    with pytest.raises(ValueError, match='got None'):
        net(torch.rand(2, 3, 40, 40))


def test_bad_preset_and_dims():
    with pytest.raises(ValueError, match='Unknown MixDehazeNet variant'):
        MixDehazeNet('XL')
    with pytest.raises(ValueError, match='embed_dims'):
        MixDehazeNet(embed_dims=[8, 16, 32, 8, 8], depths=[1] * 5)


# ---------------------------------------------------------------- the lean fusion
def naive_fusion(fusion, x, text):
    """The reference computation: explicit (H*W) x 512 attention matrix (text-update branch omitted)."""
    b, _, h, w = x.shape
    p = fusion.proj_dim
    q = fusion.q1(x).view(b, p, -1).permute(0, 2, 1)  # (B, HW, P)
    k = fusion.k2(text[:, None]).permute(0, 2, 1)  # (B, 512, P)
    v = fusion.v2(text[:, None]).permute(0, 2, 1)
    attn = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(p), dim=-1)  # (B, HW, 512)
    out = (attn @ v).permute(0, 2, 1).reshape(b, p, h, w)
    return fusion.postProj_s(out)


@pytest.mark.parametrize('text_scale', [1.0, 40.0])
def test_lean_fusion_equals_explicit_attention_forward_and_backward(text_scale):
    torch.manual_seed(3)
    fusion = CLIPTextFusion(max_elements=3000)  # forces many chunks
    for prm in fusion.parameters():
        prm.data.normal_(0, 1)
    x = torch.rand(2, 3, 13, 11) * 2 - 1
    text = (unit_text(2) * text_scale).requires_grad_(True)
    lean = fusion(x, text)
    ref_fusion = CLIPTextFusion()
    ref_fusion.load_state_dict(fusion.state_dict())
    ref_fusion.k2.bias.requires_grad_(True)  # frozen in the module; its true gradient is checked to be 0 below
    text_ref = text.detach().clone().requires_grad_(True)
    ref = naive_fusion(ref_fusion, x, text_ref)
    torch.testing.assert_close(lean, ref, atol=1e-5, rtol=1e-4)

    g = torch.randn_like(ref)
    (lean * g).sum().backward()
    (ref * g).sum().backward()
    for (name, a), b in zip(fusion.named_parameters(), ref_fusion.parameters()):
        if name == 'k2.bias':  # constant over the 512 positions: cancels in the softmax, so its gradient is 0
            assert not a.requires_grad and a.grad is None and b.grad.abs().max() < 1e-4
        elif name.startswith(('q1', 'k2', 'v2', 'postProj_s')):
            torch.testing.assert_close(a.grad, b.grad, atol=1e-4, rtol=1e-3, msg=name)
    torch.testing.assert_close(text.grad, text_ref.grad, atol=1e-4, rtol=1e-3)


def test_tilted_mean_gradcheck_double():
    alpha = torch.randn(2, 7, dtype=torch.double, requires_grad=True)
    t = torch.randn(2, 5, dtype=torch.double, requires_grad=True)
    from mixcl_arch.archs.mixdehazenet_arch import _TiltedMean
    assert torch.autograd.gradcheck(lambda a, b: _TiltedMean.apply(a, b, 3), (alpha, t))
    # and the float wrapper agrees with a softmax-weighted mean
    ref = (F.softmax(alpha[..., None] * t[:, None], -1) * t[:, None]).sum(-1)
    torch.testing.assert_close(tilted_mean(alpha, t, 10).double(), ref, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize('merge_branches', [False, True])
def test_fuse_for_inference_keeps_outputs(merge_branches):
    torch.manual_seed(4)
    net = randomize_bn(MixCLDehazeNet(**TINY, data_range='unit')).eval()
    x, t = torch.rand(2, 3, 45, 43), unit_text(2)
    with torch.no_grad():
        ref = net(x, t)
        net.fuse_for_inference(merge_branches=merge_branches)
        out = net(x, t)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) and 'norm1' in n for n, m in net.named_modules())
    assert (net.layer1.blocks[0].conv3_fused is not None) == merge_branches
    # folding only reorders float32 rounding: a few dozen ulps of the output scale, far below what a wrong fold gives
    tol = 64 * torch.finfo(torch.float32).eps * ref.abs().max().item()
    assert (out - ref).abs().max().item() <= tol


def test_fuse_for_inference_refuses_train_mode():
    with pytest.raises(RuntimeError, match='eval'):
        MixDehazeNet(**TINY).fuse_for_inference()
