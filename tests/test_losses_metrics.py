"""Dehazing-protocol metrics (against pytorch_msssim) and the ResNet contrastive regularisation loss."""
import copy
import math

import numpy as np
import pytest
import torch
import torchvision
from basicsr.losses import build_loss
from basicsr.metrics import calculate_metric
from basicsr.utils.registry import LOSS_REGISTRY, METRIC_REGISTRY
from pytorch_msssim import ssim as ms_ssim
from torch.nn import functional as F

from mixcl_arch.losses.contrast_loss import ContrastLossRes, find_resnet_weights, torchvision_resnet_filenames
from mixcl_arch.metrics.dehaze_metric import calculate_psnr_dehaze, calculate_ssim_dehaze, ssim_downsample_factor


def _pair(h, w, seed=0, b=1):
    g = torch.Generator().manual_seed(seed)
    gt = torch.rand(b, 3, h, w, generator=g)
    out = (gt + 0.1 * torch.randn(b, 3, h, w, generator=g)).clamp(0, 1)
    return out, gt


# ------------------------------------------------------------------------------------------------------ metrics
def test_metrics_registered_and_basicsr_ones_kept():
    for name in ('calculate_psnr_dehaze', 'calculate_ssim_dehaze', 'calculate_psnr', 'calculate_ssim'):
        assert name in METRIC_REGISTRY
    assert calculate_psnr_dehaze.float_input and calculate_ssim_dehaze.float_input


def test_psnr_is_float_mse_without_rounding_or_crop():
    out, gt = _pair(37, 53)
    mse = float(((out.double() - gt.double())**2).mean())
    assert calculate_psnr_dehaze(out, gt) == pytest.approx(10 * math.log10(1 / mse), abs=1e-4)
    # uint8 rounding would change the value: make sure we did not round
    q = lambda t: (t * 255).round() / 255  # noqa: E731
    rounded = 10 * math.log10(1 / float(((q(out) - q(gt))**2).mean()))
    assert abs(rounded - calculate_psnr_dehaze(out, gt)) > 1e-3


def test_psnr_clamps_and_averages_per_image():
    out, gt = _pair(20, 24, b=3)
    per_image = [calculate_psnr_dehaze(out[i], gt[i]) for i in range(3)]
    assert calculate_psnr_dehaze(out, gt) == pytest.approx(float(np.mean(per_image)), abs=1e-5)
    assert calculate_psnr_dehaze(out * 3 - 1, gt) == pytest.approx(calculate_psnr_dehaze((out * 3 - 1).clamp(0, 1), gt))


def test_ssim_equals_pytorch_msssim_small_image():
    out, gt = _pair(64, 80, seed=1)
    assert ssim_downsample_factor(64, 80) == 1
    ref = ms_ssim(out, gt, data_range=1, size_average=False, win_size=11, win_sigma=1.5).item()
    assert calculate_ssim_dehaze(out, gt) == pytest.approx(ref, abs=1e-6)


def test_ssim_downsamples_like_dehazeformer():
    out, gt = _pair(512, 600, seed=2)
    f = ssim_downsample_factor(512, 600)
    assert f == 2
    ref = ms_ssim(F.avg_pool2d(out, f), F.avg_pool2d(gt, f), data_range=1, size_average=False).item()
    assert calculate_ssim_dehaze(out, gt) == pytest.approx(ref, abs=1e-6)
    # and it is not the full-resolution SSIM
    full = ms_ssim(out, gt, data_range=1, size_average=False).item()
    assert abs(full - ref) > 1e-5  # well above the 1e-6 tolerance used for equality


def _adaptive_pool_matrix(n, m):
    """(m, n) float64 matrix averaging input rows floor(i n / m) .. ceil((i + 1) n / m) - 1 into output row i."""
    a = torch.zeros(m, n, dtype=torch.float64)
    for i in range(m):
        lo, hi = i * n // m, -(-(i + 1) * n // m)
        a[i, lo:hi] = 1 / (hi - lo)
    return a


def _dehazeformer_ssim(out, gt):
    """DehazeFormer's test.py rule written out independently: f = max(1, round(min(H, W) / 256)) with Python's
    round, images averaged down to (int(H / f), int(W / f)) by adaptive average pooling (overlapping bins when f
    does not divide the size), then pytorch_msssim.ssim."""
    h, w = out.shape[-2:]
    f = max(1, round(min(h, w) / 256))
    ph, pw = _adaptive_pool_matrix(h, int(h / f)), _adaptive_pool_matrix(w, int(w / f))
    small = [(ph @ t.double() @ pw.T).float() for t in (out, gt)]
    return ms_ssim(*small, data_range=1, size_average=False, win_size=11, win_sigma=1.5).mean().item()


def test_ssim_downsample_factor_rounds_like_python():
    # round() halves to even, as in DehazeFormer's test.py: 384 -> 1.5 -> 2, 640 -> 2.5 -> 2, 1152 -> 4.5 -> 4
    sizes = {(64, 80): 1, (383, 500): 1, (384, 500): 2, (640, 700): 2, (769, 1031): 3, (896, 900): 4,
             (1151, 1283): 4, (1152, 1201): 4, (1153, 1300): 5}
    assert {hw: ssim_downsample_factor(*hw) for hw in sizes} == sizes


@pytest.mark.parametrize('size', [(769, 1031), (1031, 1151)])  # factors 3 and 4, neither dividing the size
def test_ssim_odd_sizes_match_dehazeformer_rule(size):
    h, w = size
    g = torch.Generator().manual_seed(h)
    scene = F.interpolate(torch.rand(1, 3, h // 16, w // 16, generator=g), size=(h, w), mode='bilinear')
    gt = 0.7 * scene + 0.3 * torch.rand(1, 3, h, w, generator=g)
    out = (gt + 0.15 * torch.randn(1, 3, h, w, generator=g)).clamp(0, 1)
    want = _dehazeformer_ssim(out, gt)
    # the two sides pool in float32 vs float64 (a few float32 ulps per pixel); SSIM moves far less than 100 ulps
    tol = 100 * torch.finfo(torch.float32).eps
    assert calculate_ssim_dehaze(out, gt) == pytest.approx(want, abs=tol)
    # non-overlapping f x f blocks (avg_pool2d, what a divisible size gives) are a different, measurable rule
    f = ssim_downsample_factor(h, w)
    blocks = ms_ssim(F.avg_pool2d(out, f), F.avg_pool2d(gt, f), data_range=1, size_average=False).item()
    assert abs(blocks - want) > 1000 * tol


def test_numpy_hwc_inputs_match_tensors_and_calculate_metric_passes_yaml_extras():
    out, gt = _pair(48, 40, seed=3)
    a, b = out[0].permute(1, 2, 0).numpy(), gt[0].permute(1, 2, 0).numpy()
    assert calculate_psnr_dehaze(a, b) == pytest.approx(calculate_psnr_dehaze(out, gt), abs=1e-5)
    assert calculate_ssim_dehaze(a, b) == pytest.approx(calculate_ssim_dehaze(out, gt), abs=1e-6)
    val = calculate_metric(dict(img=out, img2=gt), dict(type='calculate_psnr_dehaze', better='higher'))
    assert val == pytest.approx(calculate_psnr_dehaze(out, gt))


def test_metric_bad_inputs():
    out, gt = _pair(16, 16)
    with pytest.raises(ValueError, match='shapes differ'):
        calculate_psnr_dehaze(out, gt[..., :8])
    with pytest.raises(ValueError, match='test_y_channel'):
        calculate_ssim_dehaze(out, gt, test_y_channel=True)
    with pytest.raises(ValueError, match='tensor'):
        calculate_psnr_dehaze(out[0, 0, 0], gt[0, 0, 0])


# --------------------------------------------------------------------------------------------------------- loss
@pytest.fixture(scope='module')
def resnet18_file(tmp_path_factory):
    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None)
    path = tmp_path_factory.mktemp('resnet') / 'resnet18_random.pth'
    torch.save(net.state_dict(), path)
    return path, net.eval()


def _reference_cr(net, pred, gt, hazy, weights=(1 / 16, 1 / 8, 1 / 4, 1)):
    """The reference ContrastLoss_res written out by hand (inputs mapped to [-1, 1] as its data are)."""

    def feats(x):
        x = x * 2 - 1
        x = net.layer1(net.maxpool(net.relu(net.bn1(net.conv1(x)))))
        out = [x]
        for layer in (net.layer2, net.layer3, net.layer4):
            x = layer(x)
            out.append(x)
        return out

    fp, fg, fh = feats(pred), feats(gt), feats(hazy)
    return sum(w * F.l1_loss(a, p) / (F.l1_loss(a, n) + 1e-7) for w, a, p, n in zip(weights, fp, fg, fh))


def test_cr_loss_matches_reference_formula(resnet18_file):
    path, net = resnet18_file
    loss = build_loss(dict(type='ContrastLossRes', loss_weight=0.1, resnet_path=str(path), depth=18))
    assert 'ContrastLossRes' in LOSS_REGISTRY
    pred, gt = _pair(32, 32, seed=4, b=2)
    hazy = gt * 0.6 + 0.35
    # the reference's ResNet stays in training mode: BatchNorm uses each call's batch statistics
    with torch.no_grad():
        ref = 0.1 * _reference_cr(copy.deepcopy(net).train(), pred, gt, hazy)
        ref_frozen = 0.1 * _reference_cr(copy.deepcopy(net).eval(), pred, gt, hazy)
    assert loss(pred, gt, hazy).item() == pytest.approx(ref.item(), rel=1e-5)
    assert loss(gt, gt, hazy).item() == pytest.approx(0, abs=1e-7)
    frozen = build_loss(dict(type='ContrastLossRes', loss_weight=0.1, resnet_path=str(path), depth=18,
                             batchnorm='frozen'))
    assert frozen(pred, gt, hazy).item() == pytest.approx(ref_frozen.item(), rel=1e-5)
    assert abs(ref.item() - ref_frozen.item()) > 1e-6 * abs(ref.item()), 'the two BatchNorm modes must differ'


def test_cr_loss_frozen_and_differentiable_in_pred(resnet18_file):
    path, _ = resnet18_file
    loss = ContrastLossRes(resnet_path=str(path), depth=18)
    loss.train()
    assert not loss.features.training
    assert all(not p.requires_grad for p in loss.parameters())
    pred, gt = _pair(64, 64, seed=5)  # batch-statistics BatchNorm needs > 1 value per channel at stride 32
    pred.requires_grad_(True)
    loss(pred, gt, gt * 0.5 + 0.4).backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0
    assert all(p.grad is None for p in loss.parameters())
    assert ContrastLossRes(resnet_path=str(path), depth=18, ablation=True)(pred, gt, gt).item() > 0


def test_cr_loss_finds_torchvision_cache(tmp_path, resnet18_file, monkeypatch):
    path, _ = resnet18_file
    monkeypatch.setattr(torch.hub, 'get_dir', lambda: str(tmp_path))
    (tmp_path / 'checkpoints').mkdir()
    target = tmp_path / 'checkpoints' / torchvision_resnet_filenames(18)[0]
    target.write_bytes(path.read_bytes())
    assert find_resnet_weights(18) == str(target)
    ContrastLossRes(depth=18)


def test_cr_loss_missing_weights_fail_fast_and_clearly(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, 'get_dir', lambda: str(tmp_path))
    with pytest.raises(FileNotFoundError) as err:
        ContrastLossRes()
    assert 'resnet152-394f9c45.pth' in str(err.value) and 'resnet_path' in str(err.value)
    with pytest.raises(FileNotFoundError, match='resnet_path'):
        ContrastLossRes(resnet_path=str(tmp_path / 'nope.pth'))


def test_cr_loss_bad_options(resnet18_file):
    path, _ = resnet18_file
    with pytest.raises(ValueError, match='depth'):
        ContrastLossRes(resnet_path=str(path), depth=19)
    with pytest.raises(ValueError, match='input_range'):
        ContrastLossRes(resnet_path=str(path), depth=18, input_range='bgr')
    loss = ContrastLossRes(resnet_path=str(path), depth=18)
    pred, gt = _pair(32, 32)
    with pytest.raises(ValueError, match='negative shape'):
        loss(pred, gt, gt[..., :16])
