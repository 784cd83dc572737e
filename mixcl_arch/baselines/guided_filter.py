"""Guided image filter (He, Sun, Tang, ECCV 2010 / TPAMI 2013) with O(N) box filters in torch.

The box filter sums a (2r+1)x(2r+1) window through an integral image (one cumulative sum per axis, then one
subtraction per pixel), so its cost does not depend on the radius. Windows are clipped at the image border and
normalised by the number of pixels they actually cover, as in the reference MATLAB implementation
(``boxfilter(ones) = N``).
"""
import torch
import torch.nn.functional as F

__all__ = ['box_sum', 'box_mean', 'guided_filter']


def _check_4d(name, x):
    if not torch.is_tensor(x) or x.dim() != 4:
        shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
        raise ValueError(f'{name} must be a 4-D tensor (B, C, H, W), got {shape}.')


def box_sum(x, radius):
    """Sum over a clipped (2r+1)x(2r+1) window around every pixel, O(N) whatever the radius.

    Args:
        x (Tensor): (B, C, H, W) tensor.
        radius (int): Window radius r >= 0.

    Returns:
        Tensor: (B, C, H, W) window sums, same dtype as ``x`` (half precision is summed in float32; in float32 the
        integral image of a [0, 1] megapixel image keeps about 1e-6 relative precision, far below DCP's eps).
    """
    _check_4d('x', x)
    radius = int(radius)
    if radius < 0:
        raise ValueError(f'radius must be >= 0, got {radius}.')
    if radius == 0:
        return x.clone()
    in_dtype = x.dtype
    y = x.to(in_dtype if in_dtype == torch.float64 else torch.float32)
    if y.device.type == 'cpu' and y.shape[0] * y.shape[1] > 1:
        # one plane at a time: a single megapixel plane stays in cache, a 4-plane stack does not (~10x slower)
        b, c, h, w = y.shape
        planes = y.reshape(b * c, 1, h, w)
        out = torch.cat([_window_sum(_window_sum(p, radius, -1), radius, -2) for p in planes.split(1)], 0)
        return out.reshape(b, c, h, w).to(in_dtype)
    return _window_sum(_window_sum(y, radius, -1), radius, -2).to(in_dtype)


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


def _window_sum(x, r, dim):
    """Clipped window sum out[i] = sum(x[max(i-r, 0) : i+r+1]) along dim -1 or -2, from one cumulative sum."""
    n = x.shape[dim]
    cs = _cumsum(x, dim)
    if n < 2 * r + 2:  # every window touches a border: gather with clipped indices
        idx = torch.arange(n, device=x.device)
        out = cs.index_select(dim, (idx + r).clamp(max=n - 1))
        lo = idx - r - 1
        keep = lo >= 0
        if bool(keep.any()):
            out.index_add_(dim, idx[keep], cs.index_select(dim, lo[keep]), alpha=-1)
        return out
    out = torch.empty_like(cs)
    m = n - 2 * r - 1
    out.narrow(dim, 0, r + 1).copy_(cs.narrow(dim, r, r + 1))
    torch.sub(cs.narrow(dim, 2 * r + 1, m), cs.narrow(dim, 0, m), out=out.narrow(dim, r + 1, m))
    torch.sub(cs.narrow(dim, n - 1, 1), cs.narrow(dim, n - 2 * r - 1, r), out=out.narrow(dim, n - r, r))
    return out


def box_mean(x, radius):
    """Mean over a clipped (2r+1)x(2r+1) window (border windows averaged over the pixels they cover).

    Args:
        x (Tensor): (B, C, H, W).
        radius (int): Window radius.

    Returns:
        Tensor: (B, C, H, W).
    """
    _check_4d('x', x)
    sums = box_sum(x, radius)
    return sums / _window_counts(x.shape[-2], x.shape[-1], int(radius), sums.dtype, x.device)


def guided_filter(guide, src, radius, eps):
    """Edge-preserving smoothing of ``src`` guided by a grey image ``guide``.

    q = mean(a) * I + mean(b) with a = cov(I, p) / (var(I) + eps), b = mean(p) - a * mean(I), all means over
    (2r+1)^2 windows.

    Args:
        guide (Tensor): (B, 1, H, W) guidance image I (typically grey, [0, 1]).
        src (Tensor): (B, C, H, W) image p to filter; each channel is filtered with the same guide.
        radius (int): Window radius r >= 0.
        eps (float): Regularisation (> 0 in practice); larger is smoother.

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
    radius = int(radius)
    if radius < 0 or float(eps) < 0:
        raise ValueError(f'radius and eps must be >= 0, got radius={radius}, eps={eps}.')
    out_dtype = src.dtype
    work = torch.float32 if src.dtype in (torch.float16, torch.bfloat16) else src.dtype
    guide = guide.to(device=src.device, dtype=work)
    src = src.to(work)
    c = src.shape[1]
    inv_n = 1.0 / _window_counts(src.shape[-2], src.shape[-1], radius, work, src.device)
    means = box_sum(torch.cat([guide, src, guide * src, guide * guide], dim=1), radius) * inv_n
    mean_i, mean_p, corr_ip, corr_ii = means.split([1, c, c, 1], dim=1)
    var_i = corr_ii - mean_i * mean_i
    a = (corr_ip - mean_i * mean_p) / (var_i + float(eps))
    b = mean_p - a * mean_i
    mean_a, mean_b = (box_sum(torch.cat([a, b], dim=1), radius) * inv_n).split([c, c], dim=1)
    return (mean_a * guide + mean_b).to(out_dtype)


def _window_counts(h, w, radius, dtype, device):
    """(1, 1, H, W) number of in-image pixels in each clipped window (outer product of the 1-D counts)."""
    def counts(n):
        idx = torch.arange(n, device=device)
        return ((idx + radius).clamp(max=n - 1) - (idx - radius).clamp(min=0) + 1).to(dtype)
    return (counts(h)[:, None] * counts(w)[None, :])[None, None]
