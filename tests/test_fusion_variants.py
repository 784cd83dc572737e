"""network_g.fusion / combine: each variant equals the reference code's module and wiring, transcribed here.

The ``Ref*`` classes and :func:`reference_forward` are the reference's (github DanielHo-BS/MixCLDehazeNet,
models/MixDehazeNet.py: TextEmb at 47e6d4a, CrossModalAttention2 at 1a37ea7, ParametricAttention at db369e9,
ParametricAttention2 with ``F_s + F_s'`` at f183a36 and with concatenation at HEAD), copied with only the hard-coded
sizes (3x256x256, 512) made arguments so that the tests stay tiny.
"""
import glob
import os

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from _net_helpers import randomize_bn
from _train_helpers import ROOT
from mixcl_arch.archs.mixdehazenet_arch import CLIPTextFusion, MixCLDehazeNet, MixDehazeNet
from mixcl_arch.archs.text_fusion import CALIPFusion, LinearParametricFusion
from mixcl_arch.utils.checkpoint import infer_arch_from_state_dict
from mixcl_arch.utils.options import load_yaml_file

pytestmark = pytest.mark.usefixtures('one_thread')

TINY = {'embed_dims': [8, 16, 16, 16, 8], 'depths': [1, 1, 1, 1, 1]}


# ---------------------------------------------------------------- the reference, transcribed
class RefCrossModalAttention2(nn.Module):
    """CALIP's parameter-free attention as the reference wrote it (dim_t = 512 hard-coded there, 9 = log2 512)."""

    def check_image_size(self, x):
        _, _, h, w = x.size()
        if h * w % 512 != 0:
            a = round(9 * h / (h + w))
            b = 9 - a
            mod_pad_h = (2**a - h % (2**a))
            mod_pad_w = (2**b - w % (2**b))
            x = F.pad(x, (0, mod_pad_w, 0, mod_pad_h), 'reflect')
        return x

    def forward(self, F_s, F_t):
        F_s_tmp = self.check_image_size(F_s)
        B, C, H, W = F_s.shape
        _, _, H_tmp, W_tmp = F_s_tmp.shape
        _, _, dim_t = F_t.shape
        F_s_tmp = F_s_tmp.permute(0, 2, 3, 1).contiguous().view(B, -1, dim_t)
        A = torch.matmul(F_s_tmp, F_t.permute(0, 2, 1))
        A = F.softmax(A / (A.shape[1]**0.5), dim=1)
        F_t_updated = torch.matmul(A.permute(0, 2, 1), F_s_tmp)
        F_s_tmp_update = torch.matmul(A, F_t)
        F_s_tmp_update = F_s_tmp_update.view(B, H_tmp, W_tmp, C).permute(0, 3, 1, 2).contiguous()
        F_s_updated = F_s + F_s_tmp_update[:, :, :H, :W]
        return F_s_updated, F_t_updated


class RefParametricAttention(nn.Module):
    """The reference's ParametricAttention (linear), with its text-update branch; ``size`` / ``dim`` were 256 / 512."""

    def __init__(self, size, dim):
        super().__init__()
        self.size = size
        self.q1 = nn.Linear(3 * size * size, dim)
        self.k1 = nn.Linear(3 * size * size, dim)
        self.v1 = nn.Linear(3 * size * size, dim)
        self.q2 = nn.Linear(dim, dim)
        self.k2 = nn.Linear(dim, dim)
        self.v2 = nn.Linear(dim, dim)
        self.postProj_s = nn.Linear(dim, 3 * size * size)
        self.postProj_t = nn.Linear(dim, dim)

    def forward(self, F_s, F_t):
        s = self.size
        F_t = F_t.squeeze(1)
        B, C, H, W = F_s.shape
        F_s_tmp = F.interpolate(F_s, size=(s, s), mode='bilinear', align_corners=False)
        F_s_tmp = F_s_tmp.view(B, -1)
        Q_s = self.q1(F_s_tmp)
        K_s = self.k1(F_s_tmp)
        V_s = self.v1(F_s_tmp)
        Q_t = self.q2(F_t)
        K_t = self.k2(F_t)
        V_t = self.v2(F_t)
        A_s = torch.matmul(Q_s, K_t.T) / (B**0.5)
        A_t = torch.matmul(Q_t, K_s.T) / (B**0.5)
        F_s_updated = torch.matmul(F.softmax(A_s, dim=1), V_t)
        F_t_updated = torch.matmul(F.softmax(A_t, dim=1), V_s)
        F_s_updated = self.postProj_s(F_s_updated)
        F_t_updated = self.postProj_t(F_t_updated)
        F_s_updated = F_s_updated.view(B, C, s, s)
        F_s_updated = F.interpolate(F_s_updated, size=(H, W), mode='bilinear', align_corners=False)
        F_s_updated = F_s + F_s_updated
        return F_s_updated, F_t_updated


class RefParametricAttention2(CLIPTextFusion):
    """ParametricAttention2's forward (explicit (H*W) x 512 attention), ``F_s + F_s'`` (f183a36) or concatenated
    (HEAD), on the layers of CLIPTextFusion, which are the reference's (same modules, names and sizes)."""

    def __init__(self, concat=True):
        super().__init__()
        self.concat = concat

    def forward(self, F_s, F_t):
        B, C, H, W = F_s.shape
        Q_s = self.q1(F_s).view(B, self.proj_dim, -1).permute(0, 2, 1)
        K_s = self.k1(F_s).view(B, self.proj_dim, -1).permute(0, 2, 1)
        V_s = self.v1(F_s).view(B, self.proj_dim, -1).permute(0, 2, 1)
        Q_t = self.q2(F_t).permute(0, 2, 1)
        K_t = self.k2(F_t).permute(0, 2, 1)
        V_t = self.v2(F_t).permute(0, 2, 1)
        A_s = torch.matmul(Q_s, K_t.permute(0, 2, 1)) / (self.proj_dim**0.5)
        A_t = torch.matmul(Q_t, K_s.permute(0, 2, 1)) / (self.proj_dim**0.5)
        F_s_updated = torch.matmul(F.softmax(A_s, dim=-1), V_t)
        F_t_updated = torch.matmul(F.softmax(A_t, dim=-1), V_s)
        F_s_updated = self.postProj_s(F_s_updated.permute(0, 2, 1).view(B, self.proj_dim, H, W))
        F_t_updated = self.postProj_t(F_t_updated.permute(0, 2, 1))
        F_s_updated = torch.cat([F_s, F_s_updated], dim=1) if self.concat else F_s + F_s_updated
        return F_s_updated, F_t_updated


class RefTextEmb(nn.Module):

    def __init__(self, embed_text=512, embed_dim=24, H=256, W=256):
        super().__init__()
        self.weight = 0.1
        self.proj = nn.Linear(embed_text, embed_dim * H * W)

    def forward(self, x, x1):
        x1 = self.proj(x1)
        x1 = x1.view(x.shape[0], x.shape[1], x.shape[2], x.shape[3])
        x = x + x1 * self.weight
        return x


def reference_forward(body, x, x1, text_emb, after_embed=False):
    """The reference MixDehazeNet.forward / forward_features, on the layers of ``body`` (a project net).

    ``after_embed``: text_emb acts on the patch embedding (TextEmb, 47e6d4a) instead of on the image (the others).
    """
    H, W = x.shape[2:]
    mod_pad_h = (4 - H % 4) % 4
    mod_pad_w = (4 - W % 4) % 4
    x = F.pad(x, (0, mod_pad_w, 0, mod_pad_h), 'reflect')
    inp = x
    if after_embed:
        x = text_emb(body.patch_embed(x), x1)
    else:
        x, x1 = text_emb(x, x1)
        x = body.patch_embed(x)
    x = body.layer1(x)
    skip1 = x
    x = body.patch_merge1(x)
    x = body.layer2(x)
    skip2 = x
    x = body.patch_merge2(x)
    x = body.layer3(x)
    x = body.patch_split1(x)
    x = body.fusion1([x, body.skip2(skip2)]) + x
    x = body.layer4(x)
    x = body.patch_split2(x)
    x = body.fusion2([x, body.skip1(skip1)]) + x
    x = body.layer5(x)
    feat = body.patch_unembed(x)
    K, B = torch.split(feat, (1, 3), dim=1)
    x = K * inp - B + inp
    return x[:, :, :H, :W]


def text_feature(b, dim, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(b, dim, generator=g)
    return t / t.norm(dim=-1, keepdim=True)


def randomize(module, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return module


def grads(tensors):
    return [t.grad.clone() for t in tensors]


def assert_same_grads(a, b, atol=1e-5, rtol=1e-4):
    for name, (ga, gb) in enumerate(zip(a, b)):
        torch.testing.assert_close(ga, gb, atol=atol, rtol=rtol, msg=f'gradient {name}')


# ---------------------------------------------------------------- calip
@pytest.mark.parametrize('size', [(32, 16), (40, 44), (44, 120), (52, 40)])
def test_calip_equals_reference_forward_and_backward(size):
    """Sizes with H*W a multiple of 512 (no pad), needing pad on both axes, and an axis already a multiple."""
    torch.manual_seed(0)
    x = (torch.rand(2, 3, *size) * 2 - 1).requires_grad_(True)
    t = text_feature(2, 512).mul(8).requires_grad_(True)  # scaled so that the softmax is far from uniform
    out = x + CALIPFusion(512)(x, t)
    x_ref, t_ref = x.detach().clone().requires_grad_(True), t.detach().clone().requires_grad_(True)
    ref, _ = RefCrossModalAttention2()(x_ref, t_ref[:, None])
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-5)
    assert (out - x).abs().amax() > 1e-3, 'the update must be non-trivial'
    g = torch.randn_like(ref)
    (out * g).sum().backward()
    (ref * g).sum().backward()
    assert_same_grads([x.grad, t.grad], [x_ref.grad, t_ref.grad])


def test_calip_rejects_text_dim_not_a_power_of_two():
    with pytest.raises(ValueError, match='text_dim must be a power of two, got 500'):
        MixCLDehazeNet(**TINY, fusion='calip', text_dim=500)


@pytest.mark.parametrize('combine', ['add', 'concat'])
def test_calip_network_equals_reference_wiring(combine):
    torch.manual_seed(1)
    net = randomize_bn(MixCLDehazeNet(**TINY, fusion='calip', combine=combine)).eval()
    assert not list(net.text_emb.parameters())
    assert net.patch_embed.proj.in_channels == (3 if combine == 'add' else 6)
    x, t = torch.rand(2, 3, 44, 48) * 2 - 1, text_feature(2, 512).mul(8)

    def ref_emb(f_s, f_t):
        upd, f_t = RefCrossModalAttention2()(f_s, f_t)
        return (upd, f_t) if combine == 'add' else (torch.cat([f_s, upd - f_s], 1), f_t)

    with torch.no_grad():
        torch.testing.assert_close(net(x, t), reference_forward(net, x, t[:, None], ref_emb), atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------- parametric_linear
def lean_linear_from_reference(ref, size, dim):
    """A LinearParametricFusion loaded (strictly) from the reference module's weights, minus its text branch."""
    lean = LinearParametricFusion(3, 3, dim, size)
    state = ref.state_dict()
    dropped = {k.split('.')[0] for k in state} - {k.split('.')[0] for k in lean.state_dict()}
    assert dropped == {'k1', 'v1', 'q2', 'postProj_t'}
    lean.load_state_dict({k: v for k, v in state.items() if k.split('.')[0] not in dropped}, strict=True)
    return lean


@pytest.mark.parametrize('batch,size', [(3, (20, 12)), (1, (8, 8)), (2, (8, 8))])
def test_parametric_linear_equals_reference_forward_and_backward(batch, size):
    torch.manual_seed(2)
    ref = randomize(RefParametricAttention(8, 16), seed=2)
    lean = lean_linear_from_reference(ref, 8, 16)
    x = (torch.rand(batch, 3, *size) * 2 - 1).requires_grad_(True)
    t = text_feature(batch, 16).requires_grad_(True)
    x_ref, t_ref = x.detach().clone().requires_grad_(True), t.detach().clone().requires_grad_(True)
    out = x + lean(x, t)
    expected, _ = ref(x_ref, t_ref[:, None])
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-4)
    g = torch.randn_like(expected)
    (out * g).sum().backward()
    (expected * g).sum().backward()
    assert_same_grads([x.grad, t.grad] + [p.grad for p in lean.parameters()],
                      [x_ref.grad, t_ref.grad] + [dict(ref.named_parameters())[n].grad for n, _ in
                                                  lean.named_parameters()])


def test_parametric_linear_mixes_the_batch_as_the_reference():
    """The softmax runs over the batch: image i gets a mix of every item's text value, weighted by its own query.

    With B = 1 the weight is 1 and the update ignores the image; with B = 2 image 0's update depends on text 1.
    """
    torch.manual_seed(3)
    lean = randomize(LinearParametricFusion(3, 3, 16, 8), seed=3)
    t, t_other = text_feature(2, 16), text_feature(2, 16, seed=1)
    a, b = torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(lean(a, t[:1]), lean(b, t[:1]), atol=1e-6)
        assert not torch.allclose(lean(torch.cat([a, b]), t)[0], lean(torch.cat([b, b]), t)[0], atol=1e-4)
        pair = lean(torch.cat([a, b]), t)
        other = lean(torch.cat([a, b]), torch.stack([t[0], t_other[1]]))
    assert not torch.allclose(pair[0], other[0], atol=1e-4), "image 0's update depends on text 1"


def test_parametric_linear_network_equals_reference_wiring():
    torch.manual_seed(4)
    net = randomize_bn(MixCLDehazeNet(**TINY, fusion='parametric_linear', fusion_size=8, text_dim=16)).eval()
    ref = randomize(RefParametricAttention(8, 16), seed=4)
    net.text_emb.load_state_dict(lean_linear_from_reference(ref, 8, 16).state_dict())
    assert net.patch_embed.proj.in_channels == 3
    x, t = torch.rand(2, 3, 40, 44) * 2 - 1, text_feature(2, 16)
    with torch.no_grad():
        torch.testing.assert_close(net(x, t), reference_forward(net, x, t[:, None], ref), atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------- textemb
def test_textemb_network_equals_reference_forward_and_backward():
    torch.manual_seed(5)
    net = randomize_bn(MixCLDehazeNet(**TINY, fusion='textemb', fusion_size=40, text_dim=16)).eval()
    ref = RefTextEmb(embed_text=16, embed_dim=8, H=40, W=40)
    ref.load_state_dict(randomize(net.text_emb, seed=5).state_dict(), strict=True)
    assert net.patch_embed.proj.in_channels == 3
    x = torch.rand(2, 3, 40, 40) * 2 - 1
    t = text_feature(2, 16).requires_grad_(True)
    t_ref = t.detach().clone().requires_grad_(True)
    out = net(x, t)
    expected = reference_forward(net, x, t_ref, ref, after_embed=True)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-4)
    g = torch.randn_like(out)
    (out * g).sum().backward()
    (expected * g).sum().backward()
    assert_same_grads([t.grad, net.text_emb.proj.weight.grad], [t_ref.grad, ref.proj.weight.grad])


def test_textemb_other_sizes_resize_the_map():
    """The reference fails off its size; here the offset map is resized, so full-image validation runs."""
    net = randomize(MixCLDehazeNet(**TINY, fusion='textemb', fusion_size=40, text_dim=16).text_emb, seed=6)
    t = text_feature(1, 16)
    with torch.no_grad():
        at_size = net(torch.zeros(1, 3, 40, 40), t)
        other = net(torch.zeros(1, 3, 48, 60), t)
    assert other.shape == (1, 8, 48, 60)
    torch.testing.assert_close(other, F.interpolate(at_size, size=(48, 60), mode='bilinear', align_corners=False))


# ---------------------------------------------------------------- parametric + add (the default is in test_archs)
def test_parametric_add_equals_reference_wiring():
    torch.manual_seed(7)
    net = randomize_bn(MixCLDehazeNet(**TINY, combine='add')).eval()
    assert net.patch_embed.proj.in_channels == 3
    ref = RefParametricAttention2(concat=False)
    ref.load_state_dict(randomize(net.text_emb, seed=7).state_dict(), strict=True)
    x, t = torch.rand(2, 3, 40, 48) * 2 - 1, text_feature(2, 512)
    with torch.no_grad():
        torch.testing.assert_close(net(x, t), reference_forward(net, x, t[:, None], ref), atol=1e-5, rtol=1e-4)


def test_explicit_default_options_are_the_default_model():
    torch.manual_seed(8)
    default = randomize_bn(MixCLDehazeNet(**TINY)).eval()
    explicit = MixCLDehazeNet(**TINY, fusion='parametric', combine='concat').eval()
    explicit.load_state_dict(default.state_dict(), strict=True)
    ref = RefParametricAttention2(concat=True)
    ref.load_state_dict(default.text_emb.state_dict(), strict=True)
    x, t = torch.rand(1, 3, 40, 40) * 2 - 1, text_feature(1, 512)
    with torch.no_grad():
        assert torch.equal(default(x, t), explicit(x, t))
        torch.testing.assert_close(default(x, t), reference_forward(default, x, t[:, None], ref), atol=1e-5,
                                   rtol=1e-4)


# ---------------------------------------------------------------- options, training, checkpoints
@pytest.mark.parametrize('kwargs,match', [
    ({'fusion': 'cross'}, r"network_g.fusion must be one of \['parametric', 'calip', 'parametric_linear', 'textemb'"),
    ({'combine': 'sum'}, r"network_g.combine must be one of \['concat', 'add'\] .* got 'sum'"),
    ({'fusion': 'textemb', 'combine': 'concat'}, r"combine must be 'add' or ~, got 'concat'"),
    ({'combine': 'add', 'fusion_chans': 4}, r'add needs fusion_chans == in_chans \(3\), got 4'),
])
def test_bad_fusion_options_name_key_and_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MixCLDehazeNet(**TINY, **kwargs)


VARIANTS = [
    {'combine': 'add'},
    {'fusion': 'calip'},
    {'fusion': 'calip', 'combine': 'concat', 'num_cond': 2},
    {'fusion': 'parametric_linear', 'fusion_size': 8, 'text_dim': 16},
    {'fusion': 'parametric_linear', 'fusion_size': 8, 'text_dim': 16, 'combine': 'concat', 'num_cond': 2},
    {'fusion': 'textemb', 'fusion_size': 40, 'text_dim': 16},
]


@pytest.mark.parametrize('kwargs', VARIANTS, ids=[repr(v) for v in VARIANTS])
def test_every_trainable_parameter_gets_a_gradient(kwargs):
    """No unused parameters (DDP's default find_unused_parameters=False would hang on one)."""
    torch.manual_seed(9)
    net = MixCLDehazeNet(**TINY, **kwargs).train()
    k = kwargs.get('num_cond', 1)
    net(torch.rand(2, 3, 40, 44), torch.randn(2, k, kwargs.get('text_dim', 512))).abs().mean().backward()
    missing = [n for n, p in net.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing


INFERABLE = [v for v in VARIANTS if v != {'fusion': 'calip'}]  # added calip leaves no trace: test below


@pytest.mark.parametrize('kwargs', INFERABLE, ids=[repr(v) for v in INFERABLE])
def test_infer_arch_rebuilds_each_variant_strictly(kwargs):
    torch.manual_seed(10)
    net = randomize_bn(MixCLDehazeNet(**TINY, **kwargs)).eval()
    opt = infer_arch_from_state_dict(net.state_dict())
    assert opt.pop('type') == 'MixCLDehazeNet'
    rebuilt = MixCLDehazeNet(**opt).eval()
    rebuilt.load_state_dict(net.state_dict(), strict=True)
    k, dim = kwargs.get('num_cond', 1), kwargs.get('text_dim', 512)
    x, t = torch.rand(2, 3, 40, 44), torch.randn(2, k, dim)
    with torch.no_grad():
        assert torch.equal(rebuilt(x, t), net(x, t))


@pytest.mark.parametrize('kwargs', INFERABLE[1:3], ids=[repr(v) for v in INFERABLE[1:3]])
def test_cli_builds_a_variant_from_a_checkpoint_without_record(tmp_path, kwargs):
    """The CLI's loader (no --opt, no recorded network_g) infers the variant instead of the default's sizes."""
    from mixcl_arch.restorers import build_net_from_checkpoint
    net = MixCLDehazeNet(**TINY, **kwargs)
    torch.save({'params': net.state_dict()}, tmp_path / 'net.pth')
    built, opt = build_net_from_checkpoint(str(tmp_path / 'net.pth'))
    assert opt['fusion'] == kwargs['fusion'] and built.fusion == kwargs['fusion']
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in built.state_dict().items())


def test_infer_arch_reads_added_calip_as_mixdehazenet():
    """Parameter-free and added: the weights are a MixDehazeNet's; the options must say calip (documented)."""
    net = MixCLDehazeNet(**TINY, fusion='calip')
    assert infer_arch_from_state_dict(net.state_dict())['type'] == 'MixDehazeNet'
    MixDehazeNet(**TINY).load_state_dict(net.state_dict(), strict=True)


# ---------------------------------------------------------------- parameter counts at the reference sizes (docs)
def n_params(module):
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize('kwargs,count', [
    ({}, 3_165_706),
    ({'combine': 'add'}, 3_165_058),
    ({'fusion': 'calip'}, 3_164_944),
    ({'fusion': 'calip', 'combine': 'concat'}, 3_165_592),
    ({'fusion': 'parametric_linear'}, 205_213_968),
    ({'fusion': 'textemb'}, 810_044_176),
])
def test_parameter_counts_of_s_at_reference_sizes(kwargs, count):
    """Built on the meta device: counts without allocating the 0.8 GB / 3.2 GB of the linear variants."""
    with torch.device('meta'):
        assert n_params(MixCLDehazeNet('S', **kwargs)) == count


def test_lean_parametric_linear_drops_only_the_text_branch_of_the_reference():
    with torch.device('meta'):
        ref = RefParametricAttention(256, 512)
        lean = LinearParametricFusion()
        text_branch = sum(n_params(getattr(ref, n)) for n in ('k1', 'v1', 'q2', 'postProj_t'))
        assert n_params(ref) == 403_901_952
        assert n_params(lean) == 202_049_024 == n_params(ref) - text_branch
        assert n_params(RefTextEmb()) == n_params(MixCLDehazeNet('S', fusion='textemb').text_emb) == 806_879_232


# ---------------------------------------------------------------- the ablation option files
LEAN = os.path.join(ROOT, 'options', 'train', 'train_MixCLDehazeNet_S_RESIDE6K.yml')
PREFIX = 'train_MixCLDehazeNet_S_RESIDE6K_fusion_'
ABLATIONS = sorted(glob.glob(os.path.join(ROOT, 'options', 'train', PREFIX + '*.yml')))


def test_one_ablation_file_per_variant():
    variants = {(opt['network_g'].get('fusion', 'parametric'), opt['network_g'].get('combine'))
                for opt in map(load_yaml_file, ABLATIONS)}
    assert variants == {('parametric', 'add'), ('calip', 'add'), ('calip', 'concat'), ('parametric_linear', 'add'),
                        ('textemb', 'add')}


@pytest.mark.parametrize('path', ABLATIONS, ids=[os.path.basename(p) for p in ABLATIONS])
def test_ablation_file_is_the_lean_recipe_but_for_the_fusion(path):
    """Same data, schedule, loss and validation as the lean S RESIDE-6K file; only the name and the fusion differ."""
    lean, opt = load_yaml_file(LEAN), load_yaml_file(path)
    assert open(path).readline().startswith('# ABLATION: ')
    tag = os.path.basename(path)[len(PREFIX):-len('.yml')]
    assert opt.pop('name') == lean.pop('name').replace('_RESIDE6K_', f'_RESIDE6K_fusion_{tag}_')
    fusion = opt['network_g'].pop('fusion', 'parametric')
    assert opt['network_g'].pop('combine') in ('add', 'concat')
    if fusion in ('parametric_linear', 'textemb'):
        assert opt['network_g'].pop('fusion_size') == 256  # the reference's
    assert opt == lean
