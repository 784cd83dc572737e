"""Dark channel prior dehazing (He, Sun, Tang, "Single Image Haze Removal Using Dark Channel Prior", TPAMI 2011).

Vectorised torch on any device (CPU or CUDA), batched, no per-pixel Python loops:

1. dark channel: per-pixel channel minimum, then a (2r+1)^2 min filter (r = 7), separable, each pass by doubling
   (O(N log r), four elementwise minima per pass; out-of-image pixels are ignored);
2. atmospheric light A: among the brightest ``top_ratio`` (0.1%) pixels of the dark channel, the one with the
   highest intensity (R+G+B) in the input, as in the paper (``atmo_mode='brightest'``); ``'mean'`` averages those
   pixels instead, as many re-implementations do; ``'channel_max'`` takes each channel's maximum over them (the lab
   report's code; R, G and B may come from different pixels); ``'brightest_grey'`` the brightest one's grey value;
3. transmission t = 1 - omega * dark(I / A), omega = 0.95;
4. refinement with a guided filter (radius 60, i.e. 121x121 windows clipped at the border, eps 1e-4) whose guide is
   the grey input (BT.601 luma), using the O(N) integral-image filter of
   :mod:`mixcl_arch.baselines.guided_filter`; ``gf_window: k`` uses kxk boxes with OpenCV's anchor instead and
   ``gf_border: reflect101`` OpenCV's default border (the lab report: ``cv2.boxFilter`` with (60, 60));
5. recovery J = (I - A) / max(t, t0) + A with t0 = 0.1, clamped to [0, 1];
6. optional relative depth -log(max(t, t0)) (up to the unknown scattering coefficient beta), and the lab report's
   maps as images (:func:`dcp_maps`).

Every option is a field of :class:`DCPParams` (frozen, checked on construction); ``DCPParams.PRESETS`` names whole
option sets: ``paper`` (the defaults) and ``lab_report``.
"""
import dataclasses
import functools
import typing

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from mixcl_arch.baselines.common import RecoveryParams, atmospheric_light, check_image, check_non_negative_int, grey, \
    option, params_from
from mixcl_arch.baselines.guided_filter import guided_filter
from mixcl_arch.utils.device import resolve_device
from mixcl_arch.utils.options import check_number

__all__ = ['DCPParams', 'MAP_NAMES', 'dark_channel', 'min_filter', 'estimate_atmospheric_light',
           'estimate_transmission', 'dcp_dehaze', 'dcp_maps', 'DCPRestorer']

MAP_NAMES = ('dark', 'transmission', 'depth')


@dataclasses.dataclass(frozen=True)
class DCPParams(RecoveryParams):
    """Options of :func:`dcp_dehaze`, checked on construction (see :class:`~mixcl_arch.baselines.common.
    BaselineParams`: ``from_strings`` for ``KEY=VALUE`` text, ``from_mapping`` for YAML, ``preset`` for
    :attr:`PRESETS`).

    The options shared with DehazeNet, with the paper's defaults, are those of
    :class:`~mixcl_arch.baselines.common.RecoveryParams`: ``top_ratio`` (0.001: the 0.1% brightest dark-channel
    pixels), ``atmo_mode`` ('brightest' by R+G+B, see :func:`estimate_atmospheric_light`), ``a_min`` (1e-3, the bound
    on A's channels when dividing by A), ``refine``, ``gf_radius`` (60), ``gf_window``, ``gf_border``, ``gf_eps``
    (1e-4), ``t0`` (0.1) and ``clamp``.

    Attributes:
        patch_radius (int): Dark channel min filter radius >= 0 (7 -> 15x15).
        omega (float): Transmission weight in (0, 1] (1 removes all haze).
    """
    patch_radius: int = option(7, check_non_negative_int)
    omega: float = option(0.95, functools.partial(check_number, gt=0, le=1))

    SECTION: typing.ClassVar[str] = 'dcp'
    # named option sets; explicit options override the preset's
    PRESETS: typing.ClassVar[dict] = {
        'paper': {},
        # the lab report's Python DCP: A = per-channel max of the top 0.1% dark-channel pixels, guided filter through
        # cv2.boxFilter(I, CV_64F, (60, 60)): 60x60 boxes (anchor 30: i-30 .. i+29), BORDER_REFLECT_101, eps 1e-4
        'lab_report': {'atmo_mode': 'channel_max', 'gf_window': 60, 'gf_border': 'reflect101'},
    }


def min_filter(x, radius):
    """Min over a clipped (2r+1)x(2r+1) window (grey erosion; border windows use only in-image pixels).

    Separable, and each 1-D pass builds window minima by doubling (min of two shifted halves: lengths 1, 2, 4, 8,
    then two overlapping length-8 windows cover 15), i.e. O(N log r) with four elementwise ops per pass for r = 7.

    Args:
        x (Tensor): (B, C, H, W).
        radius (int): Window radius r >= 0.

    Returns:
        Tensor: (B, C, H, W).
    """
    radius = int(radius)
    if radius < 0:
        raise ValueError(f'radius must be >= 0, got {radius}.')
    if radius == 0:
        return x
    return _min_1d(_min_1d(x, radius, -1), radius, -2)


def _min_1d(x, r, dim):
    n, k = x.shape[dim], 2 * r + 1
    pad = (r, r) if dim == -1 else (0, 0, r, r)
    y = F.pad(x, pad, value=float('inf'))  # y[j] = x[j - r]; +inf outside the image
    p = 1
    while 2 * p <= k:  # y[j] = min(x_pad[j : j + p]) after each step
        m = y.shape[dim] - p
        y = torch.minimum(y.narrow(dim, 0, m), y.narrow(dim, p, m))
        p *= 2
    return torch.minimum(y.narrow(dim, 0, n), y.narrow(dim, k - p, n))


def dark_channel(x, radius=7):
    """Dark channel: min over channels, then a (2r+1)^2 min filter.

    Args:
        x (Tensor): (B, C, H, W) image.
        radius (int): Patch radius (7 -> 15x15 patches).

    Returns:
        Tensor: (B, 1, H, W).
    """
    return min_filter(x.amin(dim=1, keepdim=True), radius)


def estimate_atmospheric_light(x, dark, top_ratio=0.001, mode='brightest'):
    """Atmospheric light from the brightest ``top_ratio`` of the dark channel.

    Args:
        x (Tensor): (B, 3, H, W) hazy image in [0, 1].
        dark (Tensor): (B, 1, H, W) its dark channel.
        top_ratio (float): Fraction of pixels kept (at least one pixel).
        mode (str): 'brightest': the kept pixel with the highest R+G+B (the paper); 'brightest_grey': that pixel's
            grey value; 'mean': mean colour of the kept pixels; 'channel_max': per-channel maximum over the kept
            pixels (the lab report). See :func:`mixcl_arch.baselines.common.atmospheric_light`.

    Returns:
        Tensor: (B, 3) atmospheric light per image.
    """
    return atmospheric_light(x, dark, top_ratio, mode, brightness='sum')


def estimate_transmission(x, A, omega=0.95, radius=7, a_min=1e-3):
    """Coarse transmission t = 1 - omega * dark(I / A).

    Args:
        x (Tensor): (B, 3, H, W).
        A (Tensor): (B, 3) atmospheric light.
        omega (float): Haze kept for depth perception (1 removes all haze).
        radius (int): Dark channel patch radius.
        a_min (float): Lower bound on A's channels to avoid division by ~0 for a black A.

    Returns:
        Tensor: (B, 1, H, W) raw transmission.
    """
    return 1.0 - float(omega) * dark_channel(x / A.clamp(min=a_min)[:, :, None, None], radius)


def dcp_dehaze(x, params=None, return_all=False):
    """Dehaze with the dark channel prior.

    Args:
        x (Tensor): (B, 3, H, W) hazy RGB in [0, 1] (any float dtype; computed in float32 or float64).
        params (DCPParams | None): Options (None: the defaults, the paper's), e.g. ``DCPParams(omega=0.9)`` or
            ``DCPParams.from_mapping({'preset': 'lab_report'})``.
        return_all (bool): Return a dict with every intermediate instead of J.

    Returns:
        Tensor | dict: J (B, 3, H, W); or with ``return_all`` a dict with 'J' (B,3,H,W), 'A' (B,3),
        'dark' (B,1,H,W) dark channel of the input, 't_raw' and 't' (B,1,H,W) coarse and refined transmission
        (refined t is clamped to [0, 1]), and 'depth' (B,1,H,W) relative depth -log(max(t, t0)).
    """
    p = DCPParams() if params is None else params
    if not isinstance(p, DCPParams):
        raise TypeError(f'params must be a DCPParams (e.g. DCPParams(omega=0.9)), got {type(p).__name__}.')
    check_image(x)
    in_dtype = x.dtype
    if in_dtype not in (torch.float32, torch.float64):
        x = x.float()
    dark = dark_channel(x, p.patch_radius)
    A = estimate_atmospheric_light(x, dark, p.top_ratio, p.atmo_mode)
    t_raw = estimate_transmission(x, A, p.omega, p.patch_radius, p.a_min)
    t = guided_filter(grey(x), t_raw, p.gf_radius, p.gf_eps, p.gf_window, p.gf_border).clamp(0.0, 1.0) if p.refine \
        else t_raw
    a4 = A[:, :, None, None]
    t_div = t.clamp(min=p.t0)
    J = (x - a4) / t_div + a4
    if p.clamp:
        J = J.clamp(0.0, 1.0)
    J = J.to(in_dtype)
    if not return_all:
        return J
    return {'J': J, 'A': A, 'dark': dark, 't_raw': t_raw, 't': t, 'depth': -torch.log(t_div)}


def dcp_maps(out, index=0):
    """The lab report's per-image figures of the DCP intermediates, as images.

    Args:
        out (dict): :func:`dcp_dehaze` output with ``return_all=True`` (or :meth:`DCPRestorer.estimate`).
        index (int): Which image of the batch.

    Returns:
        dict[str, np.ndarray]: (H, W, 3) float32 RGB in [0, 1] for each of :data:`MAP_NAMES`:

        - 'dark': the dark channel of the input, grey;
        - 'transmission': the refined transmission t (before the t0 bound), grey;
        - 'depth': heat map of d = -0.1 * log(max(t, t0)) (the lab report's depth), min-max normalised over the image
          to 0..255 (rounded) and coloured with OpenCV's COLORMAP_HOT (black = near, white = far); the 0.1 cancels
          in the normalisation. A constant d maps to 0 (black).
    """
    def grey_rgb(t):
        g = t[index, 0].detach().float().clamp(0, 1).cpu().numpy()
        return np.repeat(g[..., None], 3, axis=2)

    depth = (0.1 * out['depth'][index, 0]).detach().double().cpu().numpy()
    span = depth.max() - depth.min()
    norm = (depth - depth.min()) / span if span > 0 else np.zeros_like(depth)
    heat_bgr = cv2.applyColorMap(np.round(norm * 255).astype(np.uint8), cv2.COLORMAP_HOT)
    return {'dark': grey_rgb(out['dark']), 'transmission': grey_rgb(out['t']),
            'depth': heat_bgr[..., ::-1].astype(np.float32) / 255.0}


class DCPRestorer:
    """Restorer interface around :func:`dcp_dehaze` (see ``mixcl_arch.restorers``).

    Args:
        device (str | torch.device): Where to compute ('cpu', 'cuda', 'cuda:1', or 'auto' for CUDA when available).
            Inputs on another device are moved there and the result is moved back.
        params (DCPParams | None): The options; or give them as keywords instead.
        **options: Typed :class:`DCPParams` fields and ``preset`` (a name of ``DCPParams.PRESETS``, overridden by
            the other options), read by :meth:`DCPParams.from_mapping`. ``KEY=VALUE`` text goes through
            :meth:`from_strings`.

    Raises:
        ValueError: Unknown or out-of-range options, or an unavailable CUDA device.
    """

    name = 'dcp'
    num_params = 0
    net = None

    def __init__(self, device='cpu', params=None, **options):
        self.params = params_from(DCPParams, params, options)
        self.device = resolve_device(device)

    @classmethod
    def from_strings(cls, strings, device='cpu'):
        """Build from ``KEY=VALUE`` text (the CLI's ``--param``, a benchmark method spec), see
        :meth:`DCPParams.from_strings`."""
        return cls(device=device, params=DCPParams.from_strings(strings))

    @torch.no_grad()
    def estimate(self, x):
        """Every DCP intermediate for a batch, on the input's device.

        Args:
            x (Tensor): (B, 3, H, W) in [0, 1].

        Returns:
            dict: see :func:`dcp_dehaze` with ``return_all=True`` ('J', 'A', 'dark', 't_raw', 't', 'depth').
        """
        check_image(x)
        out = dcp_dehaze(x.to(self.device), self.params, return_all=True)
        return {k: v.to(x.device) for k, v in out.items()}

    @torch.no_grad()
    def __call__(self, x):
        """(B, 3, H, W) hazy in [0, 1] -> (B, 3, H, W) dehazed in [0, 1], on the input's device and dtype."""
        check_image(x)
        return dcp_dehaze(x.to(self.device), self.params).to(x.device)

    def __repr__(self):
        return f'DCPRestorer(device={self.device}, {self.params})'
