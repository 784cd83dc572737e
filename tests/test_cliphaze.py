"""CLIPHazeNet: the pure-PyTorch selective scan and its kernel dispatch, the window attention, CAM, the hybrid U-Net."""
import sys
import types

import pytest
import torch
from basicsr.archs import build_network
from torch.nn import functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from mixcl_arch.archs.cliphaze_arch import CAM, SS2D, CLIPHazeNet, WindowAttention
from mixcl_arch.ops import selective_scan as scan_mod
from mixcl_arch.ops.selective_scan import linear_scan, resolve_scan_impl, selective_scan, selective_scan_naive

pytestmark = pytest.mark.usefixtures('one_thread')

# width 4, one block per stage, window 2: inputs are padded to multiples of 16, so every test net runs in well under
# a second; embed_dim 6 keeps the FiLM MLPs tiny
TINY = dict(width=4, depths=[1, 1, 1], bottleneck_depth=1, window_size=2, embed_dim=6, film_hidden=8)
KERNEL_MODULE = 'mamba_ssm.ops.selective_scan_interface'


def scan_inputs(batch=2, dm=6, n=4, length=300, groups=2, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=dtype) * scale).requires_grad_()

    b_shape = (batch, groups, n, length) if groups else (batch, n, length)
    negative = -torch.rand(dm, n, generator=g, dtype=dtype) * 2 - 0.1  # A < 0: a stable scan, as in Mamba
    return dict(u=rand(batch, dm, length), delta=rand(batch, dm, length, scale=0.5), A=negative.requires_grad_(),
                B=rand(*b_shape), C=rand(*b_shape), D=rand(dm), z=rand(batch, dm, length), delta_bias=rand(dm))


def close_within(actual, expected, tol):
    """max |actual - expected| <= tol * max(1, max |expected|)."""
    err = (actual - expected).abs().max().item()
    assert err <= tol * max(1.0, expected.abs().max().item()), err


# ----------------------------------------------------------------------------------------------- selective scan


@pytest.mark.parametrize('length', [1, 2, 5, 16, 17, 300])
def test_linear_scan_equals_the_recurrence(length):
    g = torch.Generator().manual_seed(length)
    a, b, h0 = torch.rand(3, length, 4, generator=g), torch.randn(3, length, 4, generator=g), torch.randn(3, 4)
    for start in (None, h0):
        state, ref = torch.zeros(3, 4) if start is None else start, []
        for t in range(length):
            state = a[:, t] * state + b[:, t]
            ref.append(state)
        close_within(linear_scan(a, b, start), torch.stack(ref, dim=1), 1e-6)


@pytest.mark.parametrize('max_elements', [2**22, 500])  # one segment; many segments (carried states and adjoints)
@pytest.mark.parametrize('groups', [2, 0])  # (batch, G, N, L) and (batch, N, L) B/C
def test_selective_scan_equals_naive_recurrence_forward_and_grads(max_elements, groups):
    inp = scan_inputs(groups=groups)
    kw = dict(delta_softplus=True)
    out = selective_scan(**inp, **kw, impl='torch', max_elements=max_elements)
    ref = selective_scan_naive(**inp, **kw)
    close_within(out, ref, 1e-5)
    grad_out = torch.randn_like(ref)
    names = list(inp)
    grads = torch.autograd.grad(out, [inp[k] for k in names], grad_out)
    grads_ref = torch.autograd.grad(ref, [inp[k] for k in names], grad_out)
    for name, got, want in zip(names, grads, grads_ref):
        assert got.shape == want.shape, name
        close_within(got, want, 1e-5)


def test_selective_scan_gradcheck_double():
    inp = scan_inputs(batch=1, dm=2, n=2, length=7, groups=1, dtype=torch.float64)
    names = list(inp)

    def fn(*args):
        # 6 states per segment: the 7 positions span two segments, so the carried adjoint is checked as well
        return selective_scan(**dict(zip(names, args)), delta_softplus=True, impl='torch', max_elements=6)

    assert torch.autograd.gradcheck(fn, tuple(inp[k] for k in names), eps=1e-6, atol=1e-7)


class MaxNumel(TorchDispatchMode):
    """Records the largest tensor any op produces."""

    def __init__(self):
        super().__init__()
        self.max_numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in (out if isinstance(out, (tuple, list)) else (out, )):
            if isinstance(t, torch.Tensor):
                self.max_numel = max(self.max_numel, t.numel())
        return out


def test_selective_scan_never_holds_the_states_of_the_whole_sequence():
    inp = scan_inputs(batch=1, dm=16, n=8, length=512, groups=1)
    with MaxNumel() as rec:
        out = selective_scan(**inp, impl='torch', max_elements=1024)
        out.sum().backward()
    # nothing larger than the input u (16 x 512); all states at once would be 16 x 8 x 512
    assert rec.max_numel <= 16 * 512, rec.max_numel


# ----------------------------------------------------------------------------------------------- kernel dispatch


def install_fake_kernel(monkeypatch, calls):
    """A stand-in ``mamba_ssm`` package whose kernel records its arguments and computes the reference recurrence."""

    def selective_scan_fn(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
        calls.append(dict(delta_softplus=delta_softplus, groups=B.shape[1]))
        return selective_scan_naive(u, delta, A, B, C, D, z, delta_bias, delta_softplus)

    iface = types.ModuleType(KERNEL_MODULE)
    iface.selective_scan_fn = selective_scan_fn
    for name in ('mamba_ssm', 'mamba_ssm.ops'):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, KERNEL_MODULE, iface)


def hide_kernel(monkeypatch):
    monkeypatch.setitem(sys.modules, KERNEL_MODULE, None)  # `import` of a None entry raises ImportError


def test_scan_impl_resolution_with_the_kernel_installed(monkeypatch):
    install_fake_kernel(monkeypatch, [])
    assert resolve_scan_impl('auto', 'cuda') == 'mamba_ssm'
    assert resolve_scan_impl('auto', 'cpu') == 'torch'  # CUDA-only kernel
    assert resolve_scan_impl('torch', 'cuda') == 'torch'
    assert resolve_scan_impl('mamba_ssm', 'cuda') == 'mamba_ssm'
    with pytest.raises(ValueError, match='CUDA kernels only'):
        resolve_scan_impl('mamba_ssm', 'cpu')


def test_scan_impl_resolution_without_the_kernel(monkeypatch):
    hide_kernel(monkeypatch)
    assert resolve_scan_impl('auto', 'cuda') == 'torch'
    with pytest.raises(ImportError, match=r"mixcl_arch\[mamba\]"):
        resolve_scan_impl('mamba_ssm', 'cuda')
    with pytest.raises(ValueError, match="one of \\('auto', 'torch', 'mamba_ssm'\\)"):
        resolve_scan_impl('cuda', 'cuda')
    with pytest.raises(ImportError, match='mamba_ssm'):
        CLIPHazeNet(**TINY, scan_impl='mamba_ssm')  # at build time, not at the first forward


def test_kernel_gets_mamba_ssm_arguments_and_agrees_with_the_torch_path(monkeypatch):
    calls = []
    install_fake_kernel(monkeypatch, calls)
    monkeypatch.setattr(scan_mod, 'resolve_scan_impl', lambda impl, device: 'mamba_ssm')  # as if on CUDA
    inp = scan_inputs(length=20)
    out = selective_scan(**inp, delta_softplus=True, impl='mamba_ssm')
    assert calls == [dict(delta_softplus=True, groups=2)]
    monkeypatch.undo()
    close_within(out, selective_scan(**inp, delta_softplus=True, impl='torch'), 1e-5)
    assert len(calls) == 1


# ----------------------------------------------------------------------------------------------- window attention


def test_one_window_equals_full_attention_with_the_relative_bias():
    torch.manual_seed(0)
    attn = WindowAttention(dim=8, window_size=4, num_heads=2, shift=2)  # a map of one window is never shifted
    with torch.no_grad():
        attn.relative_position_bias_table.normal_()
    x = torch.randn(2, 4, 4, 8)
    tokens = x.view(2, 16, 8)
    q, k, v = attn.qkv(tokens).view(2, 16, 3, 2, 4).permute(2, 0, 3, 1, 4)
    # Swin's bias: entry (i, j) indexed by the (dy, dx) offset of token i from token j
    ys, xs = torch.meshgrid(torch.arange(4), torch.arange(4), indexing='ij')
    dy = ys.flatten()[:, None] - ys.flatten()[None, :]
    dx = xs.flatten()[:, None] - xs.flatten()[None, :]
    bias = attn.relative_position_bias_table[(dy + 3) * 7 + (dx + 3)].permute(2, 0, 1)
    weights = torch.softmax(q @ k.transpose(-1, -2) / 2.0 + bias, dim=-1)
    expected = attn.proj((weights @ v).transpose(1, 2).reshape(2, 16, 8)).view(2, 4, 4, 8)
    close_within(attn(x), expected, 1e-5)


@pytest.mark.parametrize('shift,pixel,support', [
    (0, (0, 0), (slice(0, 8), slice(0, 8))),
    (4, (4, 4), (slice(4, 12), slice(4, 12))),  # a shifted window
    (4, (0, 0), (slice(0, 4), slice(0, 4))),  # the wrapped corner window: masked apart from the far side
])
def test_window_attention_output_depends_only_on_its_window(shift, pixel, support):
    torch.manual_seed(0)
    attn = WindowAttention(dim=4, window_size=8, num_heads=1, shift=shift)
    x = torch.randn(1, 16, 16, 4, requires_grad=True)
    attn(x)[0, pixel[0], pixel[1]].sum().backward()
    touched = x.grad[0].abs().sum(-1) > 0
    expected = torch.zeros(16, 16, dtype=torch.bool)
    expected[support] = True
    assert torch.equal(touched, expected)


# ----------------------------------------------------------------------------------------------- SS2D and CAM


def test_ss2d_scan_orders_and_init():
    x = torch.arange(6.).view(1, 1, 2, 3)
    orders = [SS2D._to_sequence(x, k)[0, 0].tolist() for k in range(4)]
    assert orders == [[0, 1, 2, 3, 4, 5], [0, 3, 1, 4, 2, 5], [5, 4, 3, 2, 1, 0], [5, 2, 4, 1, 3, 0]]
    for k in range(4):
        assert torch.equal(SS2D._to_grid(SS2D._to_sequence(x, k), k, 2, 3), x)
    ssm = SS2D(dim=40, d_state=16, expand=2)
    assert ssm.dt_rank == 3 and ssm.d_inner == 80
    assert ssm.x_proj_weight.shape == (4, 3 + 32, 80) and ssm.dt_projs_weight.shape == (4, 80, 3)
    assert torch.allclose(-torch.exp(ssm.A_logs[2, 5]), -torch.arange(1., 17.))  # S4D-real
    dt = F.softplus(ssm.dt_projs_bias)
    assert dt.min() >= 1e-4 * 0.999 and dt.max() <= 0.1 * 1.001 and torch.equal(ssm.Ds, torch.ones(4, 80))


def test_ss2d_output_sees_the_whole_image():
    torch.manual_seed(0)
    ssm = SS2D(dim=4, d_state=4)
    x = torch.randn(1, 6, 6, 4, requires_grad=True)
    ssm(x)[0, 3, 3].sum().backward()
    assert (x.grad[0].abs().sum(-1) > 0).all()  # four directions: every pixel reaches every other


def randomized_cam(**kw):
    torch.manual_seed(0)
    cam = CAM(dim=4, embed_dim=6, film_hidden=8, **kw)
    with torch.no_grad():
        for p in cam.parameters():
            p.normal_(0, 0.5)
    return cam


def test_cam_is_a_per_pixel_convex_mix_guided_by_density_and_embedding():
    f_ssm, f_attn = torch.randn(2, 5, 5, 4), torch.randn(2, 5, 5, 4)
    dens, emb = torch.rand(2, 1, 5, 5), torch.randn(2, 6)
    fresh = CAM(dim=4, embed_dim=6, film_hidden=8)
    assert torch.allclose(fresh(f_ssm, f_attn, dens, emb), (f_ssm + f_attn) / 2)  # zero-initialised: the mean
    cam = randomized_cam()
    out = cam(f_ssm, f_attn, dens, emb)
    w = (out - f_attn) / (f_ssm - f_attn)
    assert torch.allclose(w, w[..., :1].expand_as(w), atol=1e-4)  # one weight per pixel for all channels
    assert (w > 0).all() and (w < 1).all() and w.std() > 0.01
    assert not torch.allclose(cam(f_ssm, f_attn, 1 - dens, emb), out)
    assert not torch.allclose(cam(f_ssm, f_attn, dens, -emb), out)
    dens_only = randomized_cam(use_embedding=False)
    assert torch.equal(dens_only(f_ssm, f_attn, dens, None), dens_only(f_ssm, f_attn, dens, -emb))
    emb_only = randomized_cam(use_density=False)
    assert torch.equal(emb_only(f_ssm, f_attn, None, emb), emb_only(f_ssm, f_attn, 1 - dens, emb))


# ----------------------------------------------------------------------------------------------- the network


def conditioning(batch=2, size=(7, 9), embed_dim=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 1, *size, generator=g), torch.randn(batch, embed_dim, generator=g)


@pytest.mark.parametrize('variant,width', [('T', 24), ('s', 32), ('B', 48)])
def test_presets_through_the_registry(variant, width):
    net = build_network({'type': 'CLIPHazeNet', 'variant': variant})
    assert [net.stem.out_channels] + [d.out_channels for d in net.downs] == [width, 2 * width, 4 * width, 8 * width]
    assert [len(s.blocks) for s in net.encoders] == [2, 2, 4] and len(net.bottleneck.blocks) == 4
    assert [len(s.blocks) for s in net.decoders] == [2, 2, 4]
    shifts = [blk.attn.shift for blk in net.encoders[2].blocks]
    assert shifts == [0, 4, 0, 4] and net.cfg.num_heads == 1 and net.pad_multiple == 64


def test_any_size_in_any_size_out_and_every_parameter_trains():
    torch.manual_seed(0)
    net = CLIPHazeNet(**TINY)
    x = torch.rand(2, 3, 9, 13)  # padded to 16 x 16 inside
    dens, emb = conditioning()
    out = net(x, dens, emb)
    assert out.shape == x.shape
    out.mean().backward()
    assert all(p.grad is not None for p in net.parameters())  # DDP needs no unused parameters


def test_unit_and_signed_data_ranges_are_the_same_network():
    torch.manual_seed(0)
    unit = CLIPHazeNet(**TINY, data_range='unit')
    signed = CLIPHazeNet(**TINY, data_range='signed')
    signed.load_state_dict(unit.state_dict())
    x = torch.rand(1, 3, 16, 16)
    dens, emb = conditioning(batch=1)
    close_within(unit(x, dens, emb), (signed(x * 2 - 1, dens, emb) + 1) / 2, 1e-5)


def test_density_map_of_any_resolution_is_resized_inside():
    torch.manual_seed(0)
    net = CLIPHazeNet(**TINY)
    with torch.no_grad():
        for cam in (m for m in net.modules() if isinstance(m, CAM)):
            cam.to_weight.weight.normal_()  # zero at init (CAM starts as the mean of the paths)
    x = torch.rand(1, 3, 20, 24)
    _, emb = conditioning(batch=1)
    small, large = torch.full((1, 1, 3, 5), 0.3), torch.full((1, 1, 40, 48), 0.3)
    close_within(net(x, small, emb), net(x, large, emb), 1e-6)
    assert not torch.allclose(net(x, small, emb), net(x, small + 0.5, emb))  # the density reaches the output


@pytest.mark.parametrize('cam,density,embedding', [('full', True, True), ('density_only', True, False),
                                                    ('embedding_only', False, True), ('none', False, False)])
def test_each_cam_mode_needs_exactly_its_inputs(cam, density, embedding):
    net = CLIPHazeNet(**TINY, cam=cam)
    x = torch.rand(1, 3, 16, 16)
    dens, emb = conditioning(batch=1)
    assert net(x, dens if density else None, emb if embedding else None).shape == x.shape
    if density:
        with pytest.raises(ValueError, match=r'density map of shape \(1, 1, h, w\)'):
            net(x, None, emb)
    if embedding:
        with pytest.raises(ValueError, match=r'embedding of shape \(1, embed_dim=6\)'):
            net(x, dens, torch.randn(1, 5))
    has_cam = any(isinstance(m, CAM) for m in net.modules())
    assert has_cam == (cam != 'none')


@pytest.mark.parametrize('paths', ['ssm', 'attention'])
def test_single_path_ablations(paths):
    with pytest.raises(ValueError, match='set cam: none'):
        CLIPHazeNet(**TINY, paths=paths)
    net = CLIPHazeNet(**TINY, paths=paths, cam='none')
    assert any(isinstance(m, SS2D) for m in net.modules()) == (paths == 'ssm')
    assert any(isinstance(m, WindowAttention) for m in net.modules()) == (paths == 'attention')
    assert net(torch.rand(1, 3, 16, 16)).shape == (1, 3, 16, 16)


@pytest.mark.parametrize('bad,match', [({'variant': 'XL'}, 'variant'), ({'cam': 'film'}, 'cam must be one of'),
                                       ({'depths': [1, 1]}, 'depths needs 3'), ({'num_heads': 3}, 'num_heads=3'),
                                       ({'data_range': '255'}, 'data_range')])
def test_bad_options_are_named(bad, match):
    opts = {k: v for k, v in TINY.items() if k != 'width'} if 'variant' in bad else dict(TINY)
    with pytest.raises(ValueError, match=match):
        CLIPHazeNet(**{**opts, **bad})


def test_no_image_sized_square_matrix():
    torch.manual_seed(0)
    # the attention path alone (the scan's memory bound has its own test above)
    net = CLIPHazeNet(width=4, depths=[1, 1, 1], bottleneck_depth=1, window_size=8, paths='attention', cam='none')
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad(), MaxNumel() as rec:
        net(x)
    # window attention: 64 windows x 64 x 64 scores; global attention would need (64 * 64)^2 = 16.8M
    assert rec.max_numel <= 64 * 64 * 64, rec.max_numel
