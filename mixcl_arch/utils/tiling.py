"""Seamless tiled inference for images larger than a tile size.

The image is covered by overlapping tiles (evenly spaced, the last one flush with the border). Each tile's output
is weighted by a separable window that is 1 inside the tile and, on every side that overlaps a neighbour, falls to 0
across the overlap: the outer quarter of the overlap gets weight 0 (the tile-border pixels, where padding makes a
network's output differ from the whole-image output, are never used), the middle half a raised-cosine ramp. Two
neighbours' windows sum to exactly 1 over their overlap, and the accumulated result is divided by the accumulated
weights, so any network whose receptive field reaches at most ``overlap // 4`` pixels gives exactly the untiled
output, and networks with global operations (pooling, attention) blend smoothly instead of showing seams.
"""
import math

import torch
from torch.nn import functional as F


def tile_starts(size, tile, overlap, align=1):
    """Evenly spaced tile origins along one axis.

    Args:
        size (int): Image length along the axis.
        tile (int): Tile length.
        overlap (int): Overlap wanted between neighbouring tiles (it can come out up to ``align - 1`` smaller).
        align (int): Origins are multiples of ``align`` (``size - tile`` must be one too).

    Returns:
        list[int]: Origins; the first is 0 and the last is ``size - tile`` (a single 0 when ``size <= tile``).
    """
    if size <= tile:
        return [0]
    n = max(math.ceil((size - overlap) / (tile - overlap)), 2)
    return [round(i * (size - tile) / (n - 1) / align) * align for i in range(n)]


def _ramp(length, overlap, device):
    """Weights rising from 0 to 1 over ``overlap`` samples, as a (length,) tensor (index 0 = tile border)."""
    w = torch.ones(length, dtype=torch.float64, device=device)
    if overlap <= 0:
        return w
    margin = overlap // 4
    n = max(overlap - 2 * margin, 1)
    idx = torch.arange(length, dtype=torch.float64, device=device)
    rise = 0.5 - 0.5 * torch.cos(math.pi * (idx - margin + 0.5) / n)
    w = torch.where(idx < margin, torch.zeros_like(w), torch.where(idx < margin + n, rise, w))
    return w


def axis_weights(starts, tile, size, device='cpu'):
    """1-D blending windows of every tile along one axis.

    Args:
        starts (list[int]): Tile origins from :func:`tile_starts`.
        tile (int): Tile length (clipped to ``size``).
        size (int): Image length.

    Returns:
        list[Tensor]: One (min(tile, size),) float64 window per tile.
    """
    length = min(tile, size)
    out = []
    for i, s in enumerate(starts):
        left = starts[i - 1] + length - s if i > 0 else 0
        right = s + length - starts[i + 1] if i + 1 < len(starts) else 0
        w = _ramp(length, left, device) * _ramp(length, right, device).flip(0)
        out.append(w)
    return out


def _pad_to_multiple(x, align):
    """Bottom/right padding to multiples of ``align``: reflect where possible, else replicate."""
    h, w = x.shape[2:]
    ph, pw = (-h) % align, (-w) % align
    if not (ph or pw):
        return x
    mode = 'reflect' if ph < h and pw < w else 'replicate'
    return F.pad(x, (0, pw, 0, ph), mode)


def net_tile_align(net, align=None):
    """The pixel grid tiles of ``net`` stay on: ``align`` when given, else the net's ``tile_align`` or ``patch_size``
    attribute (4 for MixDehazeNet, which down-samples twice by 2), else 1."""
    return int(align or getattr(net, 'tile_align', None) or getattr(net, 'patch_size', 1) or 1)


def hat_tile_args(tile_size, tile_pad):
    """(tile, overlap) of :func:`tiled_forward` for HAT-style ``tile_size`` / ``tile_pad`` options.

    HAT (Real-ESRGAN's tiler) cuts the image into ``tile_size`` squares and runs each with ``tile_pad`` pixels of
    context on every side, so the net sees ``tile_size + 2 * tile_pad`` pixels and neighbouring inputs share
    ``2 * tile_pad``. Here the same inputs are blended (see the module docstring) instead of cropped.
    """
    return int(tile_size) + 2 * int(tile_pad), 2 * int(tile_pad)


def tiled_forward(fn, x, tile=512, overlap=32, out_channels=None, align=1):
    """Apply ``fn`` to overlapping tiles of ``x`` and blend the results without seams.

    Args:
        fn (callable): Maps a (B, C, h, w) tensor to a (B, C_out, h, w) tensor (same spatial size).
        x (Tensor): (B, C, H, W) input.
        tile (int | None): Tile size in pixels; None or 0 (or an image no larger than ``tile`` on both sides)
            runs ``fn`` on the whole image.
        overlap (int): Overlap between neighbouring tiles in pixels, ``0 <= overlap < tile``.
        out_channels (int | None): C_out when known; otherwise taken from the first tile.
        align (int): Keep every tile on this pixel grid (a network that down-samples by 4, like MixDehazeNet,
            is only shift-equivariant by multiples of 4; other offsets change its output). The image is first
            padded at the bottom/right to a multiple of ``align`` (reflect, as MixDehazeNet pads) and the tile
            size is rounded down to one.

    Returns:
        Tensor: (B, C_out, H, W) in the dtype ``fn`` returns.

    Raises:
        ValueError: For an invalid tile / overlap, or when ``fn`` changes the spatial size.
    """
    if x.dim() != 4:
        raise ValueError(f'tiled_forward expects a (B, C, H, W) tensor, got shape {tuple(x.shape)}.')
    h, w = x.shape[2:]
    if not tile or (h <= tile and w <= tile):
        return fn(x)
    tile, overlap, align = int(tile), int(overlap), max(int(align), 1)
    if tile < 1 or overlap < 0 or overlap >= tile:
        raise ValueError(f'Need tile >= 1 and 0 <= tile_overlap < tile, got tile={tile}, overlap={overlap}.')
    if align > 1:
        tile = tile // align * align
        if tile <= overlap:
            raise ValueError(f'tile_overlap {overlap} must be smaller than the tile size rounded down to a multiple '
                             f'of {align} ({tile}).')
        full_h, full_w = h, w
        x = _pad_to_multiple(x, align)
        h, w = x.shape[2:]
    ys, xs = tile_starts(h, tile, overlap, align), tile_starts(w, tile, overlap, align)
    th, tw = min(tile, h), min(tile, w)
    wy, wx = axis_weights(ys, tile, h, x.device), axis_weights(xs, tile, w, x.device)
    acc = weight = None
    for i, y0 in enumerate(ys):
        for j, x0 in enumerate(xs):
            out = fn(x[:, :, y0:y0 + th, x0:x0 + tw])
            if out.shape[-2:] != (th, tw):
                raise ValueError(f'tiled_forward: fn changed the tile size from {(th, tw)} to '
                                 f'{tuple(out.shape[-2:])}; it must keep the spatial size.')
            if acc is None:
                c = out_channels or out.shape[1]
                acc = torch.zeros(x.shape[0], c, h, w, dtype=torch.float32, device=out.device)
                weight = torch.zeros(1, 1, h, w, dtype=torch.float32, device=out.device)
            win = (wy[i][:, None] * wx[j][None, :]).to(device=out.device, dtype=torch.float32)
            acc[:, :, y0:y0 + th, x0:x0 + tw] += out.float() * win
            weight[:, :, y0:y0 + th, x0:x0 + tw] += win
    # every pixel is covered with positive total weight by construction; the floor only guards against rounding
    out = (acc / weight.clamp_min(1e-12)).to(out.dtype)
    return out[:, :, :full_h, :full_w] if align > 1 else out


def conditioned_tiled_forward(fn, x, cond, tile, overlap, align=1):
    """:func:`tiled_forward` with conditioning computed once on the whole image.

    Vectors (MixCLDehazeNet's (B, K, E) ``cond``, CLIPHazeNet's ``embedding``) go to every tile unchanged. A
    ``density`` map (any resolution, e.g. the 1/8 map of a feature store) is first resized to the image as the net
    resizes it (bilinear, ``align_corners=False``), stacked onto the image as a channel, and so tiled, padded and
    cropped exactly like the image: each tile gets its own slice.

    Args:
        fn (callable): ``fn(tile, cond_of_the_tile)`` -> (B, 3, h, w).
        x (Tensor): (B, 3, H, W) images.
        cond (Tensor | dict | None): The whole image's conditioning (see :func:`mixcl_arch.utils.net_call.run_net`).
        tile, overlap, align: As :func:`tiled_forward` (tile None or 0: whole image).

    Returns:
        Tensor: (B, 3, H, W).
    """
    if not isinstance(cond, dict) or cond.get('density') is None:
        return tiled_forward(lambda t: fn(t, cond), x, tile, overlap, align=align)
    density = F.interpolate(cond['density'].float(), size=x.shape[-2:], mode='bilinear', align_corners=False,
                            antialias=True)
    channels = x.shape[1]
    stacked = torch.cat([x, density.to(x.dtype)], dim=1)
    return tiled_forward(lambda t: fn(t[:, :channels], dict(cond, density=t[:, channels:])), stacked, tile, overlap,
                         align=align)
