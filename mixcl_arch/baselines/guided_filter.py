"""Guided image filter (He, Sun, Tang, ECCV 2010 / TPAMI 2013) with O(N) box filters in torch.

The box filter sums a window through an integral image (one cumulative sum per axis, then one subtraction per
pixel), so its cost does not depend on the window size. Two window definitions (:func:`window_span`):

* ``radius`` r: a (2r+1)x(2r+1) window centred on the pixel (He et al.'s MATLAB code; the project's default);
* ``window`` k: a kxk box anchored as OpenCV's ``cv2.boxFilter`` (anchor k // 2), i.e. the pixel i sees
  i - k // 2 .. i + (k - 1) // 2 on each axis; an even k reaches one pixel further up / left than down / right
  (k = 60: i - 30 .. i + 29).

Two borders (``border``):

* ``'clip'``: windows are clipped at the image border and normalised by the number of pixels they actually cover,
  as in the reference MATLAB implementation (``boxfilter(ones) = N``);
* ``'reflect101'``: the image is mirrored without repeating the edge pixel (OpenCV's default ``BORDER_REFLECT_101``,
  torch's ``'reflect'`` padding) and every window mean divides by the full window area, as ``cv2.boxFilter``
  with its defaults. The mirrored margin must be smaller than the image (``before, after < H, W``).
"""
import torch
import torch.nn.functional as F

__all__ = ['BORDERS', 'window_span', 'box_sum', 'box_mean', 'guided_filter']

BORDERS = ('clip', 'reflect101')


def _check_4d(name, x):
    if not torch.is_tensor(x) or x.dim() != 4:
        shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
        raise ValueError(f'{name} must be a 4-D tensor (B, C, H, W), got {shape}.')


def window_span(radius=None, window=None):
    """Extent of the window around a pixel along one axis.

    Args:
        radius (int | None): r >= 0: the centred (2r+1)-pixel window. Ignored when ``window`` is given.
        window (int | None): k >= 1: a k-pixel box with OpenCV's anchor k // 2.

    Returns:
        tuple[int, int]: (before, after): pixel i sees i - before .. i + after.

    Raises:
        ValueError: A negative radius, a window below 1, or neither given.
    """
    if window is not None:
        k = int(window)
        if k < 1:
            raise ValueError(f'window (box size) must be >= 1, got {window}.')
        return k // 2, k - 1 - k // 2
    if radius is None:
        raise ValueError('Give a window radius or a box size (window).')
    r = int(radius)
    if r < 0:
        raise ValueError(f'radius must be >= 0, got {radius}.')
    return r, r


def box_sum(x, radius, window=None):
    """Sum over a clipped window around every pixel, O(N) whatever its size.

    Args:
        x (Tensor): (B, C, H, W) tensor.
        radius (int): Window radius r >= 0: (2r+1)x(2r+1) windows.
        window (int | None): Box size k instead (OpenCV's anchor, see :func:`window_span`); overrides ``radius``.

    Returns:
        Tensor: (B, C, H, W) window sums, same dtype as ``x`` (half precision is summed in float32; in float32 the
        integral image of a [0, 1] megapixel image keeps about 1e-6 relative precision, far below DCP's eps).
    """
    _check_4d('x', x)
    return _box_sum(x, window_span(radius, window))


def _box_sum(x, span):
    if span == (0, 0):
        return x.clone()
    in_dtype = x.dtype
    y = x.to(in_dtype if in_dtype == torch.float64 else torch.float32)
    if y.device.type == 'cpu' and y.shape[0] * y.shape[1] > 1:
        # one plane at a time: a single megapixel plane stays in cache, a 4-plane stack does not (~10x slower)
        b, c, h, w = y.shape
        planes = y.reshape(b * c, 1, h, w)
        out = torch.cat([_window_sum(_window_sum(p, span, -1), span, -2) for p in planes.split(1)], 0)
        return out.reshape(b, c, h, w).to(in_dtype)
    return _window_sum(_window_sum(y, span, -1), span, -2).to(in_dtype)


_BLOCK = 32


def _cumsum(x, dim):
    """Inclusive cumulative sum along dim -1 or -2.

    On CPU, torch.cumsum is a scalar loop (~3 ns/element); a blocked scan (32x32 triangular matmul inside blocks of
    32, then a cumsum over the 32x shorter block totals) is 2-5x faster. CUDA uses torch.cumsum (matmuls there
    may run in TF32).
    """
    if x.device.type != 'cpu':
        return torch.cumsum(x, dim)
    n = x.shape[dim]
    nb = -(-n // _BLOCK)
    ones = torch.ones(_BLOCK, _BLOCK, dtype=x.dtype, device=x.device)
    if dim == -1:
        y = F.pad(x, (0, nb * _BLOCK - n)).reshape(*x.shape[:-1], nb, _BLOCK) @ torch.triu(ones)
        last = y[..., -1]
        y = y + (torch.cumsum(last, -1) - last)[..., None]
        return y.reshape(*x.shape[:-1], nb * _BLOCK)[..., :n]
    y = torch.tril(ones) @ F.pad(x, (0, 0, 0, nb * _BLOCK - n)).reshape(*x.shape[:-2], nb, _BLOCK, x.shape[-1])
    last = y[..., -1, :]
    y = y + (torch.cumsum(last, -2) - last)[..., None, :]
    return y.reshape(*x.shape[:-2], nb * _BLOCK, x.shape[-1])[..., :n, :]


def _window_sum(x, span, dim):
    """Clipped window sum out[i] = sum(x[max(i-before, 0) : i+after+1]) along dim -1 or -2, from one cumulative
    sum; ``span`` = (before, after)."""
    before, after = span
    n = x.shape[dim]
    k = before + after + 1
    cs = _cumsum(x, dim)
    if n < k + 1:  # every window touches a border: gather with clipped indices
        idx = torch.arange(n, device=x.device)
        out = cs.index_select(dim, (idx + after).clamp(max=n - 1))
        lo = idx - before - 1
        keep = lo >= 0
        if bool(keep.any()):
            out.index_add_(dim, idx[keep], cs.index_select(dim, lo[keep]), alpha=-1)
        return out
    out = torch.empty_like(cs)
    m = n - k
    # i <= before: nothing to subtract; before < i < n - after: full windows; i >= n - after: clipped at the end
    out.narrow(dim, 0, before + 1).copy_(cs.narrow(dim, after, before + 1))
    torch.sub(cs.narrow(dim, k, m), cs.narrow(dim, 0, m), out=out.narrow(dim, before + 1, m))
    torch.sub(cs.narrow(dim, n - 1, 1), cs.narrow(dim, n - k, after), out=out.narrow(dim, n - after, after))
    return out


def box_mean(x, radius, window=None, border='clip'):
    """Window mean around every pixel (module docstring: window definitions and borders).

    Args:
        x (Tensor): (B, C, H, W).
        radius (int): Window radius: (2r+1)x(2r+1) windows.
        window (int | None): Box size k instead (OpenCV's anchor); overrides ``radius``.
        border (str): 'clip' (mean over the in-image pixels) or 'reflect101' (mirrored image, as cv2.boxFilter).

    Returns:
        Tensor: (B, C, H, W).
    """
    _check_4d('x', x)
    return _box_mean(x, window_span(radius, window), border)


def _box_mean(x, span, border):
    if border not in BORDERS:
        raise ValueError(f'border must be one of {BORDERS}, got {border!r}.')
    h, w = x.shape[-2:]
    if border == 'clip':
        sums = _box_sum(x, span)
        return sums / _window_counts(h, w, span, sums.dtype, x.device)
    before, after = span
    if max(before, after) >= min(h, w):
        raise ValueError(f'border reflect101 mirrors {before} / {after} pixels, which needs an image larger than that; '
                         f'got {h}x{w}. Use a smaller window or border clip.')
    work = x if x.dtype == torch.float64 else x.float()
    padded = F.pad(work, (before, after, before, after), mode='reflect')  # torch's reflect = BORDER_REFLECT_101
    # inside the padded image the windows of the original pixels are never clipped: divide by the full area
    sums = _box_sum(padded, span)[..., before:before + h, before:before + w]
    return (sums / float((before + after + 1)**2)).to(x.dtype)


def guided_filter(guide, src, radius, eps, window=None, border='clip'):
    """Edge-preserving smoothing of ``src`` guided by a grey image ``guide``.

    q = mean(a) * I + mean(b) with a = cov(I, p) / (var(I) + eps), b = mean(p) - a * mean(I), all means over
    (2r+1)^2 windows (or kxk boxes with ``window``; see the module docstring).

    Args:
        guide (Tensor): (B, 1, H, W) guidance image I (typically grey, [0, 1]).
        src (Tensor): (B, C, H, W) image p to filter; each channel is filtered with the same guide.
        radius (int): Window radius r >= 0.
        eps (float): Regularisation (> 0 in practice); larger is smoother.
        window (int | None): Box size k >= 1 instead of ``radius`` (OpenCV's anchor k // 2).
        border (str): 'clip' (default) or 'reflect101' (as cv2.boxFilter's default border).

    Returns:
        Tensor: (B, C, H, W) filtered ``src``, dtype of ``src``.

    Raises:
        ValueError: On wrong ranks, a guide with more than one channel, mismatched batch/spatial sizes, or a
            negative radius / eps.
    """
    _check_4d('guide', guide)
    _check_4d('src', src)
    if guide.shape[1] != 1:
        raise ValueError(f'guide must have 1 channel (B, 1, H, W), got shape {tuple(guide.shape)}.')
    if guide.shape[0] != src.shape[0] or guide.shape[-2:] != src.shape[-2:]:
        raise ValueError(f'guide {tuple(guide.shape)} and src {tuple(src.shape)} must share batch and H, W.')
    if not src.is_floating_point():
        raise ValueError(f'src must be a float tensor, got dtype {src.dtype}.')
    if float(eps) < 0:
        raise ValueError(f'eps must be >= 0, got {eps}.')
    span = window_span(radius, window)
    out_dtype = src.dtype
    work = torch.float32 if src.dtype in (torch.float16, torch.bfloat16) else src.dtype
    guide = guide.to(device=src.device, dtype=work)
    src = src.to(work)
    c = src.shape[1]
    means = _box_mean(torch.cat([guide, src, guide * src, guide * guide], dim=1), span, border)
    mean_i, mean_p, corr_ip, corr_ii = means.split([1, c, c, 1], dim=1)
    var_i = corr_ii - mean_i * mean_i
    a = (corr_ip - mean_i * mean_p) / (var_i + float(eps))
    b = mean_p - a * mean_i
    mean_a, mean_b = _box_mean(torch.cat([a, b], dim=1), span, border).split([c, c], dim=1)
    return (mean_a * guide + mean_b).to(out_dtype)


def _window_counts(h, w, span, dtype, device):
    """(1, 1, H, W) number of in-image pixels in each clipped window (outer product of the 1-D counts)."""
    before, after = span

    def counts(n):
        idx = torch.arange(n, device=device)
        return ((idx + after).clamp(max=n - 1) - (idx - before).clamp(min=0) + 1).to(dtype)
    return (counts(h)[:, None] * counts(w)[None, :])[None, None]
