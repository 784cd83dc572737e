"""Guided filter: the O(N) box filter and the full filter against brute-force windows, across scan blocks."""
import mixcl_arch  # noqa: F401  (patches basicsr first)
import pytest
import torch
import torch.nn.functional as F

from mixcl_arch.baselines.dcp import min_filter
from mixcl_arch.baselines.guided_filter import box_mean, box_sum, guided_filter


# spans 3 x 4 of box_sum's 32-pixel scan blocks and is a multiple of neither, so the carry between blocks is checked
H, W = 70, 97
# 34: one interior window per column (H = 2r + 2); 40: windows taller than the image and wider than a block
RADII = list(range(1, 10)) + [34, 40]


def _brute_sum(x, r):
    """Sum of every clipped (2r+1)^2 window, from the explicit windows of the zero-padded image (no scan)."""
    k = 2 * r + 1
    return F.pad(x, (r, r, r, r)).unfold(-2, k, 1).unfold(-2, k, 1).sum((-1, -2))


def _dyadic(shape, seed, dtype):
    """Multiples of 1/256 in [0, 1): every window sum and running sum of an (H, W) plane is exact in float32
    (at most 13 integer + 8 fraction bits of its 24), and the values themselves are exact in (b)float16."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 256, shape, generator=g) / 256).to(dtype)


@pytest.mark.parametrize('radius', [0] + RADII)
def test_box_sum_and_mean_exact_across_blocks(radius):
    x = _dyadic((2, 3, H, W), radius, torch.float64)
    want = _brute_sum(x, radius)
    counts = _brute_sum(torch.ones(1, 1, H, W, dtype=torch.float64), radius)
    for dtype in (torch.float64, torch.float32, torch.float16, torch.bfloat16):
        got = box_sum(x.to(dtype), radius)
        assert got.dtype == dtype
        # exact sums (half precision is summed in float32), so only the final rounding to dtype remains
        assert torch.equal(got, want.to(dtype)), (dtype, (got.double() - want).abs().max())
        # mean = exact sum / count with one rounding (unit roundoff u); half precision also rounds sum and count
        mean = box_mean(x.to(dtype), radius)
        u = torch.finfo(dtype).eps / 2
        rel = u if dtype in (torch.float64, torch.float32) else (1 + u)**2 / (1 - u) - 1
        tol = rel * (want / counts).abs()
        assert mean.dtype == dtype and bool(((mean.double() - want / counts).abs() <= tol).all()), dtype


@pytest.mark.parametrize('radius', RADII)
def test_box_sum_float32_rounding_within_bound(radius):
    """Real-valued data: the two scans' running sums reach W * max|x| and H * (2r+1) * max|x|, and every window
    sum is a difference of two of them, so its float32 error stays below 2 eps (2r+1) (H + W) max|x|."""
    g = torch.Generator().manual_seed(radius)
    x = torch.rand(2, 3, H, W, generator=g)
    err = (box_sum(x, radius).double() - _brute_sum(x.double(), radius)).abs().max()
    assert err <= 2 * torch.finfo(torch.float32).eps * (2 * radius + 1) * (H + W) * x.abs().max()


def _textbook_guided(guide, src, r, eps):
    """He et al.'s Algorithm 1 in float64 with brute-force window means."""
    n = _brute_sum(torch.ones_like(guide), r)

    def mean(t):
        return _brute_sum(t, r) / n

    mean_i, mean_p = mean(guide), mean(src)
    var_i = mean(guide * guide) - mean_i * mean_i
    a = (mean(guide * src) - mean_i * mean_p) / (var_i + eps)
    b = mean_p - a * mean_i
    return mean(a) * guide + mean(b), var_i


@pytest.mark.parametrize('radius', RADII)
def test_guided_filter_matches_textbook_across_blocks(radius):
    g = torch.Generator().manual_seed(radius)
    guide = torch.rand(2, 1, H, W, generator=g)
    src = 0.5 * torch.rand(2, 3, H, W, generator=g) + 0.5 * guide  # correlated with the guide: a is not ~0
    eps = 1e-3
    want, var_i = _textbook_guided(guide.double(), src.double(), radius, eps)
    # window means carry box_sum's error bound divided by the smallest window ((r+1)^2 pixels, at a corner);
    # a = cov / (var + eps) amplifies it by 1 / (var + eps), taken at the worst window that mean(a) averages
    # (min_filter is checked exactly against brute force in test_dcp.py)
    cond = 1 / (min_filter(var_i, radius) + eps)
    for dtype in (torch.float64, torch.float32):
        got = guided_filter(guide.to(dtype), src.to(dtype), radius, eps)
        assert got.dtype == dtype and got.shape == src.shape
        tol = 2 * torch.finfo(dtype).eps * (2 * radius + 1) * (H + W) / (radius + 1)**2 * cond
        err = (got.double() - want).abs()
        assert bool((err <= tol).all()), (dtype, (err / tol).max())


def test_guided_filter_multichannel_float32_and_properties():
    g = torch.Generator().manual_seed(0)
    guide = torch.rand(2, 1, 32, 40, generator=g)
    src = torch.rand(2, 3, 32, 40, generator=g)
    out = guided_filter(guide, src, 3, 1e-3)
    assert out.dtype == torch.float32 and out.shape == src.shape
    ref = guided_filter(guide.double(), src.double(), 3, 1e-3)
    assert torch.allclose(out.double(), ref, atol=1e-5)
    # each channel is filtered independently with the shared guide
    single = guided_filter(guide, src[:, 1:2], 3, 1e-3)
    assert torch.allclose(single, out[:, 1:2], atol=1e-6)
    # filtering the guide by itself with tiny eps is (almost) the identity; a constant stays constant
    assert torch.allclose(guided_filter(guide.double(), guide.double(), 2, 1e-12), guide.double(), atol=1e-5)
    const = torch.full((1, 2, 10, 10), 0.3)
    assert torch.allclose(guided_filter(guide[:1, :, :10, :10], const, 2, 1e-4), const, atol=1e-6)
    # a big eps smooths: output variance below input variance
    assert guided_filter(guide, src, 5, 10.0).var() < src.var()


def test_guided_filter_bad_input():
    x = torch.rand(1, 1, 8, 8)
    with pytest.raises(ValueError, match='1 channel'):
        guided_filter(torch.rand(1, 3, 8, 8), x, 1, 1e-3)
    with pytest.raises(ValueError, match='share batch'):
        guided_filter(x, torch.rand(1, 1, 8, 9), 1, 1e-3)
    with pytest.raises(ValueError, match='4-D'):
        guided_filter(x[0], x, 1, 1e-3)
    with pytest.raises(ValueError, match='radius'):
        box_sum(x, -1)
