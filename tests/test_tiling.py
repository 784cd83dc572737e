"""Tiled inference: exactness for local networks, seam-free blending for global ones, coverage, bad arguments."""
import pytest
import torch
from torch import nn

from mixcl_arch.archs.mixdehazenet_arch import MixDehazeNet
from mixcl_arch.utils.tiling import axis_weights, tile_starts, tiled_forward


def _local_net(radius_layers=3):
    """Translation-equivariant stand-in: 3x3 convs (zero padding), receptive radius == radius_layers."""
    torch.manual_seed(0)
    layers = []
    for i in range(radius_layers):
        layers += [nn.Conv2d(3 if i == 0 else 8, 8 if i < radius_layers - 1 else 3, 3, padding=1)]
        if i < radius_layers - 1:
            layers.append(nn.GELU())
    return nn.Sequential(*layers).eval()


@pytest.mark.parametrize('size', [(1, 130), (37, 41), (100, 101), (170, 170), (257, 300), (64, 64)])
@pytest.mark.parametrize('tile,overlap', [(64, 16), (100, 32), (64, 0), (48, 40)])
def test_windows_cover_every_pixel(size, tile, overlap):
    for n in size:
        starts = tile_starts(n, tile, overlap)
        length = min(tile, n)
        assert starts[0] == 0 and starts[-1] + length == n
        assert all(b > a for a, b in zip(starts, starts[1:]))
        total = torch.zeros(n, dtype=torch.float64)
        for s, w in zip(starts, axis_weights(starts, tile, n)):
            assert w.min() >= 0 and w.max() <= 1
            total[s:s + length] += w
        assert total.min() > 1 - 1e-9  # every pixel is covered
        if all(b - a >= length / 2 for a, b in zip(starts, starts[1:])):
            # only neighbours overlap: their windows form an exact partition of unity
            assert torch.allclose(total, torch.ones_like(total), atol=1e-9), total
        else:  # overlap close to the tile size: several tiles stack, the final normalisation handles it
            assert total.max() < 1.2


def test_local_network_tiled_equals_untiled_exactly():
    net = _local_net(radius_layers=3)
    x = torch.rand(2, 3, 150, 221)
    with torch.no_grad():
        full = net(x)
        tiled = tiled_forward(net, x, tile=64, overlap=16)  # zero margin 4 >= receptive radius 3
    assert tiled.shape == full.shape
    assert (tiled - full).abs().max().item() < 1e-5


def test_tiles_are_really_used():
    calls = []

    def fn(t):
        calls.append(tuple(t.shape[-2:]))
        return t * 2

    x = torch.rand(1, 3, 130, 70)
    out = tiled_forward(fn, x, tile=64, overlap=16)
    assert len(calls) == len(tile_starts(130, 64, 16)) * len(tile_starts(70, 64, 16)) == 3 * 2
    assert all(c == (64, 64) for c in calls)
    assert torch.allclose(out, x * 2, atol=1e-6)


def test_small_image_is_not_tiled():
    calls = []

    def fn(t):
        calls.append(t.shape)
        return t

    tiled_forward(fn, torch.rand(1, 3, 3, 200), tile=512, overlap=32)
    assert len(calls) == 1


def test_real_network_blends_without_seams():
    """MixDehazeNet has global pooling, so tiles differ from the whole image; the blend must stay smooth."""
    torch.manual_seed(0)
    net = MixDehazeNet(embed_dims=[8, 16, 16, 16, 8], depths=[1, 1, 1, 1, 1], data_range='unit').eval()
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 160), torch.linspace(0, 1, 160), indexing='ij')
    x = torch.stack([0.3 + 0.5 * xx, 0.4 + 0.3 * yy, 0.6 - 0.2 * xx * yy])[None]  # smooth hazy-looking ramp
    with torch.no_grad():
        full = net(x)
        tiled = tiled_forward(net, x, tile=96, overlap=48)
    diff = (tiled - full).abs()
    assert diff.mean().item() < 0.02, diff.mean().item()
    # seams show up as jumps between neighbouring pixels that the untiled output does not have
    jump_tiled = (tiled[..., :, 1:] - tiled[..., :, :-1]).abs().amax(dim=(0, 1, 2))
    jump_full = (full[..., :, 1:] - full[..., :, :-1]).abs().amax(dim=(0, 1, 2))
    assert (jump_tiled - jump_full).max().item() < 0.02
    jump_tiled = (tiled[..., 1:, :] - tiled[..., :-1, :]).abs().amax(dim=(0, 1, 3))
    jump_full = (full[..., 1:, :] - full[..., :-1, :]).abs().amax(dim=(0, 1, 3))
    assert (jump_tiled - jump_full).max().item() < 0.02


def test_naive_pasting_would_show_a_seam():
    """Sanity check of the seam measure: abutting tiles without blending give a visible jump with this net."""
    torch.manual_seed(0)
    net = MixDehazeNet(embed_dims=[8, 16, 16, 16, 8], depths=[1, 1, 1, 1, 1], data_range='unit').eval()
    x = torch.rand(1, 3, 96, 96) * 0.5 + 0.25
    with torch.no_grad():
        full = net(x)
        pasted = torch.cat([net(x[..., :48]), net(x[..., 48:])], dim=-1)
        blended = tiled_forward(net, x, tile=64, overlap=32)
    err_pasted = (pasted - full).abs()[..., 46:50].max().item()
    err_blended = (blended - full).abs()[..., 46:50].max().item()
    assert err_blended < err_pasted


@pytest.mark.parametrize('tile,overlap', [(64, 64), (64, -1), (64, 80)])
def test_bad_tile_arguments(tile, overlap):
    with pytest.raises(ValueError, match='tile_overlap'):
        tiled_forward(lambda t: t, torch.rand(1, 3, 200, 200), tile=tile, overlap=overlap)


def test_fn_changing_size_is_reported():
    with pytest.raises(ValueError, match='spatial size'):
        tiled_forward(lambda t: t[..., :-1, :], torch.rand(1, 3, 100, 100), tile=64, overlap=16)
