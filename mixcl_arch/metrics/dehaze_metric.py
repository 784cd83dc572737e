"""PSNR / SSIM under the dehazing protocol of DehazeFormer, MixDehazeNet and MixCLDehazeNet.

The protocol (their ``test.py``): float RGB in [0, 1] after clamping, no uint8 rounding, no border crop, one value per
image (averaged over images by the caller); SSIM is ``pytorch_msssim.ssim`` (Gaussian window 11, sigma 1.5,
data_range 1) computed after average-pool down-sampling both images by ``f = max(1, round(min(H, W) / 256))`` to
``(int(H / f), int(W / f))``.

BasicSR's own ``calculate_psnr`` / ``calculate_ssim`` (uint8, optional Y channel and crop) stay registered next to
these. :class:`mixcl_arch.models.mixcl_dehaze_model.MixCLDehazeModel` hands the float tensors to every metric whose
function has ``float_input = True`` and BasicSR's uint8 images to the others.
"""
import numpy as np
import torch
from basicsr.utils.registry import METRIC_REGISTRY
from pytorch_msssim import ssim as _ms_ssim
from torch.nn import functional as F


def to_float_batch(img, name='img'):
    """Convert an image (or a batch) to a float32 tensor (B, C, H, W) clamped to [0, 1] (float32 as the reference).

    Args:
        img (Tensor | ndarray): Tensor (C, H, W) or (B, C, H, W) in [0, 1]; or ndarray (H, W, C) / (H, W): float in
            [0, 1], or uint8 / uint16 (scaled by 255 / 65535). Channel order does not matter for PSNR / SSIM.
        name (str): Argument name for error messages.

    Returns:
        Tensor: (B, C, H, W) float32.
    """
    if isinstance(img, np.ndarray):
        if img.dtype == np.uint8:
            arr = img.astype(np.float32) / 255.
        elif img.dtype == np.uint16:
            arr = img.astype(np.float32) / 65535.
        elif np.issubdtype(img.dtype, np.floating):
            arr = img.astype(np.float32)
        else:
            raise ValueError(f'{name}: unsupported array dtype {img.dtype}.')
        if arr.ndim == 2:
            arr = arr[:, :, None]
        if arr.ndim != 3:
            raise ValueError(f'{name}: expected an (H, W, C) or (H, W) array, got shape {img.shape}.')
        tensor = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))[None]
    elif isinstance(img, torch.Tensor):
        tensor = img.detach().to('cpu', torch.float32)
        if tensor.dim() == 3:
            tensor = tensor[None]
        if tensor.dim() != 4:
            raise ValueError(f'{name}: expected a (C, H, W) or (B, C, H, W) tensor, got shape {tuple(img.shape)}.')
    else:
        raise ValueError(f'{name}: expected a torch.Tensor or numpy.ndarray, got {type(img).__name__}.')
    return tensor.clamp(0, 1)


def _prepare(img, img2, crop_border, test_y_channel):
    if test_y_channel:
        raise ValueError('The dehazing protocol evaluates RGB; use BasicSR calculate_psnr / calculate_ssim for '
                         'test_y_channel=True.')
    x, y = to_float_batch(img, 'img'), to_float_batch(img2, 'img2')
    if x.shape != y.shape:
        raise ValueError(f'Image shapes differ: img {tuple(x.shape)} vs img2 {tuple(y.shape)}.')
    if crop_border:
        x = x[..., crop_border:-crop_border, crop_border:-crop_border]
        y = y[..., crop_border:-crop_border, crop_border:-crop_border]
    return x, y


@METRIC_REGISTRY.register()
def calculate_psnr_dehaze(img, img2, crop_border=0, test_y_channel=False, **kwargs):
    """PSNR (dB) under the dehazing protocol: float [0, 1] RGB, clamped, no rounding, no crop by default.

    Args:
        img (Tensor | ndarray): Restored image, (C, H, W) / (B, C, H, W) tensor or (H, W, C) array, see
            :func:`to_float_batch`.
        img2 (Tensor | ndarray): Ground truth, same shape.
        crop_border (int): Pixels cropped on each side (0 in the protocol).
        test_y_channel (bool): Must be False (the protocol is RGB).
        **kwargs: Ignored (BasicSR passes YAML extras such as ``better``).

    Returns:
        float: Mean over the batch of the per-image PSNR; ``inf`` for identical images.
    """
    x, y = _prepare(img, img2, crop_border, test_y_channel)
    mse = ((x - y)**2).mean(dim=(1, 2, 3))
    psnr = 10. * torch.log10(1. / mse)
    return float(psnr.mean())


calculate_psnr_dehaze.float_input = True


def ssim_downsample_factor(height, width):
    """DehazeFormer's down-sampling factor ``max(1, round(min(H, W) / 256))``."""
    return max(1, round(min(height, width) / 256))


@METRIC_REGISTRY.register()
def calculate_ssim_dehaze(img, img2, crop_border=0, test_y_channel=False, **kwargs):
    """SSIM under the dehazing protocol (pytorch_msssim, Gaussian 11x11, sigma 1.5, data_range 1).

    Both images are first average-pooled to ``(int(H / f), int(W / f))`` with ``f = max(1, round(min(H, W) / 256))``
    (exactly ``F.adaptive_avg_pool2d`` as DehazeFormer's / MixCLDehazeNet's test.py).

    Args:
        img, img2, crop_border, test_y_channel, **kwargs: As :func:`calculate_psnr_dehaze`.

    Returns:
        float: Mean over the batch of the per-image SSIM.
    """
    x, y = _prepare(img, img2, crop_border, test_y_channel)
    h, w = x.shape[-2:]
    f = ssim_downsample_factor(h, w)
    if f > 1:
        size = (int(h / f), int(w / f))
        x, y = F.adaptive_avg_pool2d(x, size), F.adaptive_avg_pool2d(y, size)
    val = _ms_ssim(x, y, data_range=1., size_average=False, win_size=11, win_sigma=1.5)
    return float(val.mean())


calculate_ssim_dehaze.float_input = True
