"""Dark channel prior: recovery of a known A and J on a synthetic image where the prior holds exactly."""
import mixcl_arch  # noqa: F401  (patches basicsr first)
import pytest
import torch
import torch.nn.functional as F

from mixcl_arch.baselines.dcp import DCPRestorer, dark_channel, dcp_dehaze, estimate_atmospheric_light, min_filter

A_TRUE = torch.tensor([0.85, 0.9, 0.95])
T_TRUE = 0.6


def _synthetic(h=96, w=96, seed=0):
    """Clear image J where every pixel has one zero channel (dark channel 0 everywhere) plus a 24x24 'sky' equal to A.

    Hazy image = J * t + A * (1 - t) with constant t. Returns (hazy, J), both (1, 3, H, W).
    """
    g = torch.Generator().manual_seed(seed)
    J = 0.05 + 0.85 * torch.rand(1, 3, h, w, generator=g)
    zero_ch = torch.randint(0, 3, (1, 1, h, w), generator=g)
    J = J.masked_fill(torch.arange(3)[None, :, None, None] == zero_ch, 0.0)
    J[..., :24, w - 24:] = A_TRUE[None, :, None, None]
    hazy = J * T_TRUE + A_TRUE[None, :, None, None] * (1 - T_TRUE)
    return hazy, J


def _brute_min(x, r):
    """Min of every clipped (2r+1)^2 window, from the explicit windows of the +inf-padded image."""
    k = 2 * r + 1
    return F.pad(x, (r, r, r, r), value=float('inf')).unfold(-2, k, 1).unfold(-2, k, 1).amin((-1, -2))


@pytest.mark.parametrize('radius', list(range(1, 10)) + [34, 40])
def test_min_filter_equals_brute_force(radius):
    # odd sizes; radii 1-9 take every doubling pattern of windows 3..19 wide (power of two + 1, 2^n - 1, ...), 34
    # and 40 make windows as tall as / taller than the image. A minimum only selects, so it is exact in every dtype.
    g = torch.Generator().manual_seed(radius)
    x = torch.rand(2, 3, 70, 97, generator=g)
    for dtype in (torch.float64, torch.float32, torch.float16, torch.bfloat16):
        xd = x.to(dtype)
        got = min_filter(xd, radius)
        assert got.dtype == dtype and torch.equal(got, _brute_min(xd, radius)), dtype


def test_dark_channel_min_filter_radius_zero_and_tiny_images():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 23, 30, generator=g)
    m = x.amin(1, keepdim=True)
    assert torch.equal(dark_channel(x, 7), _brute_min(m, 7))
    assert torch.equal(min_filter(m, 0), m)
    small = torch.rand(1, 1, 3, 4, generator=g)  # window larger than the image: global minimum
    assert torch.all(min_filter(small, 7) == small.min())


def test_atmospheric_light_modes():
    x = torch.zeros(1, 3, 10, 10)
    dark = torch.zeros(1, 1, 10, 10)
    dark[0, 0, 2, 3] = 0.9
    dark[0, 0, 5, 5] = 0.8
    x[0, :, 2, 3] = torch.tensor([0.5, 0.5, 0.5])
    x[0, :, 5, 5] = torch.tensor([0.9, 0.8, 1.0])
    # top 2% of 100 pixels = 2 pixels; 'max' keeps the brighter input pixel, 'mean' averages
    A = estimate_atmospheric_light(x, dark, top_ratio=0.02, mode='max')
    assert torch.allclose(A, torch.tensor([[0.9, 0.8, 1.0]]))
    A = estimate_atmospheric_light(x, dark, top_ratio=0.02, mode='mean')
    assert torch.allclose(A, torch.tensor([[0.7, 0.65, 0.75]]))


@pytest.mark.parametrize('mode', ['max', 'mean'])
def test_dcp_recovers_A_with_defaults(mode):
    hazy, _ = _synthetic()
    out = dcp_dehaze(hazy, atmo_mode=mode, return_all=True)
    assert out['A'].shape == (1, 3)
    assert torch.allclose(out['A'][0], A_TRUE, atol=0.05)
    assert set(out) == {'J', 'A', 'dark', 't_raw', 't', 'depth'}
    for key in ('dark', 't_raw', 't', 'depth'):
        assert out[key].shape == (1, 1, 96, 96)


def test_dcp_exact_recovery_when_haze_fully_removed():
    # omega = 1 and no refinement: t_raw = t exactly off the sky, so J is recovered to float precision everywhere
    hazy, J = _synthetic()
    out = dcp_dehaze(hazy, omega=1.0, refine=False, return_all=True)
    sky = torch.zeros(96, 96, dtype=torch.bool)
    sky[:24, 72:] = True
    inner_sky = torch.zeros_like(sky)
    inner_sky[:17, 79:] = True  # farther than the patch radius from the scene
    assert torch.allclose(out['t_raw'][0, 0][~sky], torch.full(((~sky).sum(),), T_TRUE), atol=1e-5)
    assert torch.allclose(out['J'], J, atol=1e-5)
    assert torch.allclose(out['depth'][0, 0][~sky], torch.full(((~sky).sum(),), -torch.log(torch.tensor(T_TRUE))),
                          atol=1e-4)
    # in the sky interior t_raw = 0, so the recovery uses t0 and depth is -log(t0)
    assert torch.allclose(out['depth'][0, 0][inner_sky], torch.full((inner_sky.sum(),), 2.302585), atol=1e-4)


def test_dcp_defaults_recover_J_within_tolerance():
    # With omega 0.95 the estimate keeps 5% haze: t_hat = 1 - 0.95 (1 - t) = 0.62 instead of 0.6, an error of
    # |J - A| * (1 - t / t_hat) <= 0.032 per pixel; the guided filter (radius 60) adds smoothing near the sky.
    hazy, J = _synthetic()
    err_raw = (dcp_dehaze(hazy, refine=False) - J).abs()
    assert err_raw.max() < 0.033  # the analytic bound, without refinement
    J_hat = dcp_dehaze(hazy)
    err = (J_hat - J).abs()
    assert err.mean() < 0.03  # measured 0.019
    assert err[..., 30:, :60].max() < 0.1  # measured 0.071: t follows the random guide's texture a little
    hazy_err = (hazy - J).abs().mean()
    assert err.mean() < 0.2 * hazy_err
    assert J_hat.min() >= 0 and J_hat.max() <= 1


def test_restorer_interface_batch_and_dtype():
    hazy1, _ = _synthetic(seed=0)
    hazy2, _ = _synthetic(seed=3)
    batch = torch.cat([hazy1, hazy2])
    r = DCPRestorer(gf_radius='20', omega='0.9', refine='true')
    assert r.name == 'dcp' and r.num_params == 0 and r.net is None
    assert r.params['gf_radius'] == 20 and r.params['omega'] == 0.9
    out = r(batch)
    assert out.shape == batch.shape and out.dtype == torch.float32
    # batched result equals per-image results (A and t are estimated per image)
    assert torch.allclose(out[1:], r(hazy2), atol=1e-6)
    est = r.estimate(batch)
    assert est['A'].shape == (2, 3)
    assert torch.allclose(r(batch.double()).float(), out, atol=1e-4)
    if torch.cuda.is_available():
        rc = DCPRestorer(device='cuda', gf_radius=20, omega=0.9)
        assert torch.allclose(rc(batch), out, atol=1e-4)


def test_bad_options_and_inputs():
    with pytest.raises(ValueError, match='Unknown DCP option'):
        DCPRestorer(radius=3)
    with pytest.raises(ValueError, match='omega'):
        DCPRestorer(omega=1.5)
    with pytest.raises(ValueError, match='atmo_mode'):
        DCPRestorer(atmo_mode='median')
    with pytest.raises(ValueError, match='boolean'):
        DCPRestorer(refine='maybe')
    with pytest.raises(ValueError, match=r'\(B, 3, H, W\)'):
        DCPRestorer()(torch.rand(1, 1, 8, 8))
    with pytest.raises(ValueError, match='float'):
        dcp_dehaze(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match='CUDA'):
            DCPRestorer(device='cuda')
