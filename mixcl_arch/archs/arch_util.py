"""Shape logic shared by the archs, written so that ``torch.export`` and the ONNX exporter keep H and W symbolic.

Python ``if``/``max`` on a traced size, or a slice to a size the tracer cannot prove smaller, turn into guards that
pin the exported graph to the example size (or make the export fail). Here the choice between reflect and replicate
padding is a tensor ``where``, padding and cropping are index gathers, and the callers compute padded sizes with
``torch.sym_max``. In eager mode the results are bit-identical to ``F.pad`` and slicing.
"""
import torch


def _axis_indices(size, before, after, device):
    """Source indices of a padded axis: (reflect, replicate, reflect_ok).

    Args:
        size (int): Axis length n (an int or a symbolic size).
        before (int): Samples added before index 0.
        after (int): Samples added after index n - 1.
        device (torch.device): Device of the returned tensors.

    Returns:
        tuple[Tensor, Tensor, Tensor]: (n + before + after,) int64 reflect and replicate indices, and a 0-dim bool
        that is true when reflect padding is possible (``before < n`` and ``after < n``, as ``F.pad`` requires).
    """
    i = torch.arange(size + before + after, device=device) - before
    last = size - 1
    reflect = last - (last - i.abs()).abs()
    replicate = i.clamp(0, last)
    reflect_ok = (i >= -last).all() & (i <= 2 * last).all()
    return reflect, replicate, reflect_ok


def pad_reflect_or_replicate(x, left, right, top, bottom):
    """Pad the last two dims: reflect, or replicate on both axes where any pad reaches its axis size.

    Equals ``F.pad(x, (left, right, top, bottom), mode)`` with mode 'reflect' when every pad is smaller than its
    axis and 'replicate' otherwise (the rule MixDehazeNet and DehazeNet use for tiny inputs), computed as two index
    gathers so that the mode choice is data (a ``where``), not a Python branch.

    Args:
        x (Tensor): (..., H, W).
        left, right, top, bottom (int): Non-negative pads (ints or symbolic sizes).

    Returns:
        Tensor: (..., H + top + bottom, W + left + right).
    """
    h, w = x.shape[-2:]
    rh, ph, ok_h = _axis_indices(h, top, bottom, x.device)
    rw, pw, ok_w = _axis_indices(w, left, right, x.device)
    ok = ok_h & ok_w
    return x.index_select(-2, torch.where(ok, rh, ph)).index_select(-1, torch.where(ok, rw, pw))


def crop_top_left(x, h, w):
    """``x[..., :h, :w]`` as an index gather (a symbolic slice end would guard on ``h <= H`` when exported).

    Args:
        x (Tensor): (..., H, W) with H >= h and W >= w.
        h, w (int): Output size.

    Returns:
        Tensor: (..., h, w), contiguous.
    """
    return x.index_select(-2, torch.arange(h, device=x.device)).index_select(-1, torch.arange(w, device=x.device))
