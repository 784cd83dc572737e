"""Dark channel prior: recovery of a known A and J on a synthetic image where the prior holds exactly; the lab
report's variant (per-channel max A, 60x60 box guided filter, maps) against an independent NumPy/OpenCV version."""
import cv2
import mixcl_arch  # noqa: F401  (patches basicsr first)
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mixcl_arch.baselines.dcp import DCPParams, DCPRestorer, dark_channel, dcp_dehaze, dcp_maps, \
    estimate_atmospheric_light, min_filter
from mixcl_arch.baselines.guided_filter import box_mean, box_sum, guided_filter

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
    # top 2% of 100 pixels = 2 pixels; 'brightest' keeps the brighter input pixel, 'mean' averages
    A = estimate_atmospheric_light(x, dark, top_ratio=0.02, mode='brightest')
    assert torch.allclose(A, torch.tensor([[0.9, 0.8, 1.0]]))
    A = estimate_atmospheric_light(x, dark, top_ratio=0.02, mode='brightest_grey')  # its BT.601 luma, grey
    assert torch.allclose(A, torch.full((1, 3), 0.299 * 0.9 + 0.587 * 0.8 + 0.114 * 1.0))
    A = estimate_atmospheric_light(x, dark, top_ratio=0.02, mode='mean')
    assert torch.allclose(A, torch.tensor([[0.7, 0.65, 0.75]]))


@pytest.mark.parametrize('mode', ['brightest', 'mean'])
def test_dcp_recovers_A_with_defaults(mode):
    hazy, _ = _synthetic()
    out = dcp_dehaze(hazy, DCPParams(atmo_mode=mode), return_all=True)
    assert out['A'].shape == (1, 3)
    assert torch.allclose(out['A'][0], A_TRUE, atol=0.05)
    assert set(out) == {'J', 'A', 'dark', 't_raw', 't', 'depth'}
    for key in ('dark', 't_raw', 't', 'depth'):
        assert out[key].shape == (1, 1, 96, 96)


def test_dcp_exact_recovery_when_haze_fully_removed():
    # omega = 1 and no refinement: t_raw = t exactly off the sky, so J is recovered to float precision everywhere
    hazy, J = _synthetic()
    out = dcp_dehaze(hazy, DCPParams(omega=1.0, refine=False), return_all=True)
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
    err_raw = (dcp_dehaze(hazy, DCPParams(refine=False)) - J).abs()
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
    r = DCPRestorer.from_strings({'gf_radius': '20', 'omega': '0.9', 'refine': 'true'})
    assert r.name == 'dcp' and r.num_params == 0 and r.net is None
    assert r.params == DCPParams(gf_radius=20, omega=0.9)
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
    with pytest.raises(ValueError, match=r"dcp: unknown key\(s\) \['radius'\]; allowed: \[.*'patch_radius'"):
        DCPRestorer(radius=3)
    with pytest.raises(ValueError, match='dcp.omega: expected a number > 0 and <= 1, got 1.5'):
        DCPRestorer(omega=1.5)
    with pytest.raises(ValueError, match="dcp.atmo_mode: expected one of 'brightest', .*, got 'median'"):
        DCPRestorer(atmo_mode='median')
    with pytest.raises(ValueError, match="dcp.refine: expected true or false, got 'maybe'"):
        DCPRestorer.from_strings({'refine': 'maybe'})
    with pytest.raises(ValueError, match=r'\(B, 3, H, W\)'):
        DCPRestorer()(torch.rand(1, 1, 8, 8))
    with pytest.raises(ValueError, match='float'):
        dcp_dehaze(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match='CUDA'):
            DCPRestorer(device='cuda')


# ------------------------------------------------------------------------------------- the lab report's variant
def _np(x):
    """(1, 1, H, W) tensor -> (H, W) float64 array."""
    return x[0, 0].double().numpy()


@pytest.mark.parametrize('k', [1, 2, 3, 4, 7, 60, 61, 100])
def test_box_window_matches_opencv_anchor(k):
    # cv2.boxFilter's default anchor is k // 2; with a zero border and normalize=False it gives the clipped sums,
    # and boxFilter(ones) the in-image pixel counts. 100 is wider than the 70-pixel height.
    x = torch.rand(1, 1, 70, 97, generator=torch.Generator().manual_seed(k), dtype=torch.float64)
    sums = cv2.boxFilter(_np(x), cv2.CV_64F, (k, k), normalize=False, borderType=cv2.BORDER_CONSTANT)
    counts = cv2.boxFilter(np.ones((70, 97)), cv2.CV_64F, (k, k), normalize=False, borderType=cv2.BORDER_CONSTANT)
    assert np.allclose(_np(box_sum(x, None, window=k)), sums, atol=1e-10)
    assert np.allclose(_np(box_mean(x, None, window=k)), sums / counts, atol=1e-12)
    if k <= 61:  # OpenCV's default border (BORDER_REFLECT_101) needs the margin inside the image
        want = cv2.boxFilter(_np(x), cv2.CV_64F, (k, k))
        assert np.allclose(_np(box_mean(x, None, window=k, border='reflect101')), want, atol=1e-12)


def test_box_radius_reflect101_matches_opencv_and_rejects_small_images():
    x = torch.rand(1, 1, 40, 33, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    want = cv2.boxFilter(_np(x), cv2.CV_64F, (11, 11))
    assert np.allclose(_np(box_mean(x, 5, border='reflect101')), want, atol=1e-12)
    with pytest.raises(ValueError, match='reflect101 mirrors 30 / 29 .* got 30x33'):
        box_mean(x[..., :30, :], None, window=60, border='reflect101')
    with pytest.raises(ValueError, match='border must be one of'):
        box_mean(x, 5, border='wrap')
    with pytest.raises(ValueError, match='window'):
        box_sum(x, None, window=0)


def _lab_guided(I, p, k, eps):
    """The lab report's guided filter: every mean is cv2.boxFilter(., CV_64F, (k, k)) with its default border."""
    def mean(a):
        return cv2.boxFilter(a, cv2.CV_64F, (k, k))
    mean_i, mean_p = mean(I), mean(p)
    a = (mean(I * p) - mean_i * mean_p) / (mean(I * I) - mean_i * mean_i + eps)
    b = mean_p - a * mean_i
    return mean(a) * I + mean(b)


def test_guided_filter_box_window_matches_opencv_reference():
    g = torch.Generator().manual_seed(5)
    guide = torch.rand(1, 1, 70, 97, generator=g, dtype=torch.float64)
    src = torch.rand(1, 1, 70, 97, generator=g, dtype=torch.float64)
    got = guided_filter(guide, src, 0, 1e-4, window=60, border='reflect101')
    assert np.allclose(_np(got), _lab_guided(_np(guide), _np(src), 60, 1e-4), atol=1e-9)
    # the default (121x121 clipped windows) is a different filter
    assert not np.allclose(_np(guided_filter(guide, src, 60, 1e-4)), _np(got), atol=1e-3)


def test_atmospheric_light_channel_max_top():
    x = torch.zeros(1, 3, 10, 10)
    dark = torch.zeros(1, 1, 10, 10)
    dark[0, 0, 2, 3], dark[0, 0, 5, 5] = 0.9, 0.8
    x[0, :, 2, 3] = torch.tensor([0.5, 0.95, 0.2])  # R+G+B 1.65: the paper's pick
    x[0, :, 5, 5] = torch.tensor([0.9, 0.3, 0.4])
    x[0, :, 7, 7] = torch.tensor([1.0, 1.0, 1.0])  # brightest, but not among the top dark-channel pixels
    A = estimate_atmospheric_light(x, dark, top_ratio=0.02, mode='channel_max')
    assert torch.equal(A, torch.tensor([[0.9, 0.95, 0.4]]))
    assert torch.equal(estimate_atmospheric_light(x, dark, 0.02, 'channel_max_top'), A)  # the old spelling
    assert torch.equal(estimate_atmospheric_light(x, dark, 0.02, 'brightest'), torch.tensor([[0.5, 0.95, 0.2]]))


def _lab_report_dcp(img):
    """The lab report's DCP in NumPy / OpenCV: (H, W, 3) float64 RGB -> (J, A, t)."""
    h, w = img.shape[:2]
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (15, 15))
    dark = cv2.erode(img.min(axis=2), kernel)  # erode's default border never wins the minimum
    n = max(int(np.floor(h * w / 1000)), 1)
    top = np.argsort(dark.reshape(-1), kind='stable')[h * w - n:]
    A = img.reshape(-1, 3)[top].max(axis=0)
    t_raw = 1 - 0.95 * cv2.erode((img / A).min(axis=2), kernel)
    grey = img @ np.array([0.299, 0.587, 0.114])
    t = np.clip(_lab_guided(grey, t_raw, 60, 1e-4), 0, 1)
    J = (img - A) / np.maximum(t, 0.1)[..., None] + A
    return np.clip(J, 0, 1), A, t


def test_lab_report_preset_matches_independent_implementation():
    # the minimum channel rises strictly towards the bottom right (irrational slope ratio), so the 0.1% brightest
    # dark-channel pixels are one unambiguous set (a min filter makes plateaus elsewhere, where top-k ties)
    i, j = torch.meshgrid(torch.arange(80.), torch.arange(96.), indexing='ij')
    low = (0.2 + 0.3 * i / 80 + 0.2 * 2**0.5 * j / 96).double()
    extra = 0.3 * torch.rand(2, 80, 96, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    hazy = torch.cat([low[None], low + extra])[None]
    r = DCPRestorer(preset='lab_report')
    assert (r.params.atmo_mode, r.params.gf_window, r.params.gf_border) == ('channel_max', 60, 'reflect101')
    out = dcp_dehaze(hazy, r.params, return_all=True)
    J, A, t = _lab_report_dcp(hazy[0].permute(1, 2, 0).numpy())
    assert np.allclose(out['A'][0].numpy(), A, atol=1e-12)
    assert np.allclose(_np(out['t']), t, atol=1e-9)
    assert np.allclose(out['J'][0].permute(1, 2, 0).numpy(), J, atol=1e-9)
    # not the paper's option set
    assert (dcp_dehaze(hazy) - out['J']).abs().max() > 1e-3


def test_preset_overrides_and_bad_values():
    r = DCPRestorer(preset='lab_report', gf_window=30, atmo_mode='max')  # 'max': the old spelling of 'brightest'
    assert (r.params.gf_window, r.params.atmo_mode, r.params.gf_border) == (30, 'brightest', 'reflect101')
    assert DCPRestorer.from_strings({'preset': 'lab_report', 'gf_window': '30', 'atmo_mode': 'max'}).params == r.params
    assert DCPRestorer.from_strings({'gf_window': 'none'}).params.gf_window is None
    assert DCPRestorer(preset='paper').params == DCPRestorer().params
    with pytest.raises(ValueError, match="dcp.preset: expected one of 'paper', 'lab_report', got 'lab'"):
        DCPRestorer(preset='lab')
    with pytest.raises(ValueError, match='dcp.gf_window: expected an integer >= 1, got 0'):
        DCPRestorer(gf_window=0)
    with pytest.raises(ValueError, match="dcp.gf_border: expected one of 'clip', 'reflect101', got 'wrap'"):
        DCPRestorer(gf_border='wrap')


def test_dcp_maps_lab_report_rendering():
    hazy, _ = _synthetic(40, 48, seed=4)
    out = dcp_dehaze(hazy, DCPParams(gf_radius=5), return_all=True)
    maps = dcp_maps(out)
    assert sorted(maps) == ['dark', 'depth', 'transmission']
    for img in maps.values():
        assert img.shape == (40, 48, 3) and img.dtype == np.float32 and img.min() >= 0 and img.max() <= 1
    assert np.allclose(maps['dark'][..., 1], _np(out['dark']), atol=1e-6)
    assert np.allclose(maps['transmission'][..., 0], _np(out['t']).clip(0, 1), atol=1e-6)
    # independent: -0.1 log max(t, 0.1), min-max to 0..255, COLORMAP_HOT (BGR) -> RGB
    d = -0.1 * np.log(np.maximum(_np(out['t']), 0.1))
    u8 = np.round((d - d.min()) / (d.max() - d.min()) * 255).astype(np.uint8)
    want = cv2.applyColorMap(u8, cv2.COLORMAP_HOT)[..., ::-1] / 255.0
    assert np.allclose(maps['depth'], want, atol=1e-6)
    far, near = np.unravel_index(d.argmax(), d.shape), np.unravel_index(d.argmin(), d.shape)
    assert np.allclose(maps['depth'][far], 1.0) and np.allclose(maps['depth'][near], 0.0)  # white far, black near
    flat = dcp_maps({'dark': out['dark'], 't': torch.full_like(out['t'], 0.5), 'depth': torch.full_like(out['t'], 0.7)})
    assert np.all(flat['depth'] == 0)


def test_cli_save_maps_writes_recorded_maps(tmp_path, capsys):
    from mixcl_arch.dehaze import main
    from mixcl_arch.utils.image_io import decode_image
    from mixcl_arch.utils.output_guard import OutputManifest
    hazy, _ = _synthetic(40, 48, seed=6)
    src = tmp_path / 'in'
    src.mkdir()
    assert cv2.imwrite(str(src / 'h.png'), (hazy[0].permute(1, 2, 0).numpy()[..., ::-1] * 255).round().astype(np.uint8))
    out = tmp_path / 'out'
    args = ['-i', str(src), '-o', str(out), '--method', 'dcp', '--param', 'preset=lab_report', '--save-maps']
    assert main(args) == 0
    rgb, _ = decode_image(str(src / 'h.png'), with_info=True)
    est = DCPRestorer(preset='lab_report').estimate(torch.from_numpy(rgb.transpose(2, 0, 1).copy())[None])
    want = dcp_maps(est)
    manifest = OutputManifest(str(out), 'mixcl-dehaze')
    for name in ('dark', 'transmission', 'depth'):
        path = out / 'maps' / f'h_{name}.png'
        got, _ = decode_image(str(path), with_info=True)
        assert np.abs(got - want[name]).max() <= 0.5 / 255 + 1e-6, name  # 8-bit rounding only
        assert manifest.owns(str(path))
    dehazed, _ = decode_image(str(out / 'h.png'), with_info=True)
    assert np.abs(dehazed - est['J'][0].permute(1, 2, 0).numpy()).max() <= 0.5 / 255 + 1e-6
    # the maps are this tool's own files: --overwrite replaces them, a user's file in their place is kept
    assert main(args + ['--overwrite']) == 0
    (out / 'maps' / 'h_depth.png').write_bytes(b'user file')
    assert main(args + ['--overwrite']) == 1
    assert (out / 'maps' / 'h_depth.png').read_bytes() == b'user file'
    assert 'not written by this tool' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(['-i', str(src), '-o', str(tmp_path / 'o2'), '--method', 'hazy', '--save-maps'])
    assert '--save-maps writes the dark channel prior' in capsys.readouterr().err


def test_benchmark_figure_maps_columns(tmp_path):
    import importlib.util
    import os.path as osp
    root = osp.dirname(osp.dirname(osp.abspath(__file__)))
    spec = importlib.util.spec_from_file_location('benchmark_quality',
                                                  osp.join(root, 'scripts', 'benchmark_quality.py'))
    bq = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bq)
    data = tmp_path / 'data'
    for sub in ('hazy', 'GT'):
        (data / sub).mkdir(parents=True)
    hazy, clear = _synthetic(40, 48, seed=7)
    for sub, img in (('hazy', hazy), ('GT', clear)):
        assert cv2.imwrite(str(data / sub / 'a.png'), (img[0].permute(1, 2, 0).numpy()[..., ::-1] * 255).round()
                           .astype(np.uint8))
    common = ['--data', str(data), '--quiet', '--figure', '1', '--figure-height', '40', '--method',
              'name=Hazy,method=hazy', '--method', 'name=DCP,method=dcp,preset=lab_report']
    bq.main(common + ['--out', str(tmp_path / 'plain')])
    bq.main(common + ['--out', str(tmp_path / 'maps'), '--figure-maps'])
    plain = cv2.imread(str(tmp_path / 'plain' / 'figure.png'))
    fig = cv2.imread(str(tmp_path / 'maps' / 'figure.png'))
    cell = 48 + 4  # 40-pixel-high cells of a 48x40 image, 4-pixel gaps
    assert plain.shape[1] == 4 * cell - 4 and fig.shape[1] == 7 * cell - 4  # hazy | Hazy | DCP | 3 maps | GT
    x = torch.from_numpy(cv2.imread(str(data / 'hazy' / 'a.png'))[..., ::-1].copy()).permute(2, 0, 1)[None] / 255
    want = dcp_maps(DCPRestorer(preset='lab_report').estimate(x.float()))
    for col, name in ((3, 'dark'), (4, 'transmission'), (5, 'depth')):
        got = fig[36:76, col * cell:col * cell + 48]
        assert np.array_equal(got, (want[name][..., ::-1] * 255 + 0.5).astype(np.uint8)), name
