"""Tiled inference: exactness for local networks, seam-free blending for global ones, coverage, bad arguments."""
import pytest
import torch
from torch import nn

from mixcl_arch.archs.mixdehazenet_arch import MixDehazeNet
from mixcl_arch.utils.tiling import axis_weights, tile_starts, tiled_forward


pytestmark = pytest.mark.usefixtures('one_thread')


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


def _tiny_mixdehazenet():
    torch.manual_seed(0)
    return MixDehazeNet(embed_dims=[8, 16, 16, 16, 8], depths=[1, 1, 1, 1, 1], data_range='unit').eval()


def _smooth_image(h, w):
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing='ij')
    return torch.stack([0.3 + 0.5 * xx, 0.4 + 0.3 * yy, 0.6 - 0.2 * xx * yy])[None]  # smooth hazy-looking ramp


def _seam_excess(out, ref, cols):
    """Largest extra horizontal jump of ``out`` over ``ref`` at the given columns (a seam shows up there)."""
    g_out = (out[..., 1:] - out[..., :-1]).abs()
    g_ref = (ref[..., 1:] - ref[..., :-1]).abs()
    cols = [c for c in cols if 0 <= c < g_out.shape[-1]]
    return (g_out[..., cols] - g_ref[..., cols]).max().item()


def test_real_network_blends_without_seams():
    """MixDehazeNet has global pooling, so tiles differ slightly from the whole image; the blend hides it."""
    net = _tiny_mixdehazenet()
    x = _smooth_image(150, 170)
    with torch.no_grad():
        full = net(x)
        tiled = tiled_forward(net, x, tile=96, overlap=48, align=4)
        pasted = torch.cat([net(x[..., :84]), net(x[..., 84:])], dim=-1)  # naive abutting tiles
    assert tiled.shape == full.shape
    assert (tiled - full).abs().mean().item() < 2e-3
    assert (tiled - full).abs().max().item() < 0.05
    starts = tile_starts(172, 96, 48, 4)  # width padded to a multiple of 4
    borders = sorted({c for s in starts for c in range(s - 3, s + 4)}
                     | {c for s in starts for c in range(s + 92, s + 99)})
    assert _seam_excess(tiled, full, borders) < 0.01
    assert _seam_excess(pasted, full, [83]) > 0.03  # the measure does see a real seam


def test_tiles_must_stay_on_the_downsampling_grid():
    """Tiles at offsets that are not multiples of 4 change MixDehazeNet's output (stride-2 merges twice)."""
    net = _tiny_mixdehazenet()
    x = _smooth_image(150, 170)
    with torch.no_grad():
        full = net(x)
        aligned = tiled_forward(net, x, tile=96, overlap=48, align=4)
        unaligned = tiled_forward(net, x, tile=96, overlap=48, align=1)
    assert set(s % 4 for s in tile_starts(170, 96, 48)) != {0}
    assert all(s % 4 == 0 for s in tile_starts(172, 96, 48, 4))
    err_aligned = (aligned - full).abs().mean().item()
    err_unaligned = (unaligned - full).abs().mean().item()
    assert err_unaligned > 10 * err_aligned, (err_aligned, err_unaligned)


def test_alignment_pads_odd_sizes_and_crops_back():
    net = _local_net(radius_layers=2)
    x = torch.rand(1, 3, 99, 131)
    with torch.no_grad():
        out = tiled_forward(net, x, tile=50, overlap=16, align=4)  # tile rounded down to 48
        ref = net(torch.nn.functional.pad(x, (0, 1, 0, 1), mode='reflect'))[..., :99, :131]
    assert out.shape == (1, 3, 99, 131)
    assert (out - ref).abs().max().item() < 1e-5


@pytest.mark.parametrize('tile,overlap', [(64, 64), (64, -1), (64, 80)])
def test_bad_tile_arguments(tile, overlap):
    with pytest.raises(ValueError, match='tile_overlap'):
        tiled_forward(lambda t: t, torch.rand(1, 3, 200, 200), tile=tile, overlap=overlap)


def test_fn_changing_size_is_reported():
    with pytest.raises(ValueError, match='spatial size'):
        tiled_forward(lambda t: t[..., :-1, :], torch.rand(1, 3, 100, 100), tile=64, overlap=16)
