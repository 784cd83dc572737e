"""Guided filter: O(N) box filter and the full filter against direct windowed loops on small images."""
import mixcl_arch  # noqa: F401  (patches basicsr first)
import numpy as np
import pytest
import torch

from mixcl_arch.baselines.guided_filter import box_mean, box_sum, guided_filter


def _direct_guided(img, p, r, eps):
    """Textbook guided filter with explicit clipped windows (numpy float64, one channel)."""
    h, w = img.shape

    def win_mean(x):
        out = np.empty_like(x)
        for i in range(h):
            for j in range(w):
                out[i, j] = x[max(0, i - r):i + r + 1, max(0, j - r):j + r + 1].mean()
        return out

    mi, mp = win_mean(img), win_mean(p)
    a = (win_mean(img * p) - mi * mp) / (win_mean(img * img) - mi * mi + eps)
    b = mp - a * mi
    return win_mean(a) * img + win_mean(b)


@pytest.mark.parametrize('radius', [0, 1, 3, 20])
def test_box_sum_matches_windows(radius):
    g = torch.Generator().manual_seed(radius)
    x = torch.rand(2, 3, 13, 17, generator=g, dtype=torch.float64)
    got = box_sum(x, radius)
    want = torch.empty_like(x)
    for i in range(13):
        for j in range(17):
            want[..., i, j] = x[..., max(0, i - radius):i + radius + 1, max(0, j - radius):j + radius + 1].sum((-1, -2))
    assert torch.allclose(got, want, atol=1e-12)
    assert torch.allclose(box_mean(torch.ones(1, 1, 5, 6), radius), torch.ones(1, 1, 5, 6))


@pytest.mark.parametrize('radius,eps', [(1, 1e-4), (2, 1e-2), (4, 1e-3)])
def test_guided_filter_equals_direct(radius, eps):
    rng = np.random.default_rng(radius)
    img = rng.random((12, 15))
    p = np.clip(img * 0.7 + 0.3 * rng.random((12, 15)), 0, 1)
    want = _direct_guided(img, p, radius, eps)
    got = guided_filter(torch.from_numpy(img)[None, None], torch.from_numpy(p)[None, None], radius, eps)
    assert got.shape == (1, 1, 12, 15)
    np.testing.assert_allclose(got[0, 0].numpy(), want, atol=1e-10)


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
