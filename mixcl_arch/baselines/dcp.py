"""Dark channel prior dehazing (He, Sun, Tang, "Single Image Haze Removal Using Dark Channel Prior", TPAMI 2011).

Vectorised torch on any device (CPU or CUDA), batched, no per-pixel Python loops:

1. dark channel: per-pixel channel minimum, then a (2r+1)^2 min filter (r = 7), separable, each pass by doubling
   (O(N log r), four elementwise minima per pass; out-of-image pixels are ignored);
2. atmospheric light A: among the brightest ``top_ratio`` (0.1%) pixels of the dark channel, the one with the
   highest intensity (R+G+B) in the input, as in the paper (``atmo_mode='max'``); ``atmo_mode='mean'`` averages
   those pixels instead, as many re-implementations do; ``atmo_mode='channel_max_top'`` takes each channel's
   maximum over them (the lab report's code; R, G and B may come from different pixels);
3. transmission t = 1 - omega * dark(I / A), omega = 0.95;
4. refinement with a guided filter (radius 60, i.e. 121x121 windows clipped at the border, eps 1e-4) whose guide is
   the grey input (BT.601 luma), using the O(N) integral-image filter of
   :mod:`mixcl_arch.baselines.guided_filter`; ``gf_window: k`` uses kxk boxes with OpenCV's anchor instead and
   ``gf_border: reflect101`` OpenCV's default border (the lab report: ``cv2.boxFilter`` with (60, 60));
5. recovery J = (I - A) / max(t, t0) + A with t0 = 0.1, clamped to [0, 1];
6. optional relative depth -log(max(t, t0)) (up to the unknown scattering coefficient beta), and the lab report's
   maps as images (:func:`dcp_maps`).

``DCP_PRESETS`` names whole option sets: ``paper`` (the defaults) and ``lab_report``.
"""
import math

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from mixcl_arch.baselines.common import check_image, grey, to_bool
from mixcl_arch.baselines.guided_filter import BORDERS, guided_filter

__all__ = ['DCP_DEFAULTS', 'DCP_PRESETS', 'MAP_NAMES', 'dark_channel', 'min_filter', 'estimate_atmospheric_light',
           'estimate_transmission', 'dcp_dehaze', 'dcp_maps', 'DCPRestorer']

DCP_DEFAULTS = {
    'patch_radius': 7,
    'omega': 0.95,
    'top_ratio': 0.001,
    'atmo_mode': 'max',
    'refine': True,
    'gf_radius': 60,
    'gf_window': None,
    'gf_border': 'clip',
    'gf_eps': 1e-4,
    't0': 0.1,
    'a_min': 1e-3,
    'clamp': True,
}
ATMO_MODES = ('max', 'mean', 'channel_max_top')
# named option sets; explicit options override the preset's
DCP_PRESETS = {
    'paper': {},
    # the lab report's Python DCP: A = per-channel max of the top 0.1% dark-channel pixels, guided filter through
    # cv2.boxFilter(I, CV_64F, (60, 60)): 60x60 boxes (anchor 30: i-30 .. i+29), BORDER_REFLECT_101, eps 1e-4
    'lab_report': {'atmo_mode': 'channel_max_top', 'gf_window': 60, 'gf_border': 'reflect101'},
}
MAP_NAMES = ('dark', 'transmission', 'depth')



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


def estimate_atmospheric_light(x, dark, top_ratio=0.001, mode='max'):
    """Atmospheric light from the brightest ``top_ratio`` of the dark channel.

    Args:
        x (Tensor): (B, 3, H, W) hazy image in [0, 1].
        dark (Tensor): (B, 1, H, W) its dark channel.
        top_ratio (float): Fraction of pixels kept (at least one pixel).
        mode (str): 'max': the kept pixel with the highest R+G+B (the paper); 'mean': mean colour of the kept pixels;
            'channel_max_top': per-channel maximum over the kept pixels (the lab report).

    Returns:
        Tensor: (B, 3) atmospheric light per image.
    """
    if mode not in ATMO_MODES:
        raise ValueError(f'atmo_mode must be one of {ATMO_MODES}, got {mode!r}.')
    b, c, h, w = x.shape
    k = max(1, int(math.floor(h * w * float(top_ratio))))
    idx = dark.reshape(b, h * w).topk(k, dim=1).indices  # (B, k)
    pix = x.reshape(b, c, h * w).gather(2, idx[:, None, :].expand(b, c, k))  # (B, 3, k)
    if mode == 'mean':
        return pix.mean(dim=2)
    if mode == 'channel_max_top':
        return pix.amax(dim=2)
    best = pix.sum(dim=1).argmax(dim=1)  # (B,)
    return pix.gather(2, best[:, None, None].expand(b, c, 1))[..., 0]


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



def dcp_dehaze(x, patch_radius=7, omega=0.95, top_ratio=0.001, atmo_mode='max', refine=True, gf_radius=60,
               gf_window=None, gf_border='clip', gf_eps=1e-4, t0=0.1, a_min=1e-3, clamp=True, return_all=False):
    """Dehaze with the dark channel prior.

    Args:
        x (Tensor): (B, 3, H, W) hazy RGB in [0, 1] (any float dtype; computed in float32 or float64).
        patch_radius (int): Dark channel min filter radius (7 -> 15x15).
        omega (float): Transmission weight in (0, 1].
        top_ratio (float): Fraction of dark channel pixels used for A (0.001 = 0.1%).
        atmo_mode (str): 'max' (paper), 'mean' or 'channel_max_top', see :func:`estimate_atmospheric_light`.
        refine (bool): Refine t with the guided filter.
        gf_radius (int): Guided filter radius: (2r+1)x(2r+1) windows.
        gf_window (int | None): Guided filter box size k instead of ``gf_radius``: kxk boxes with OpenCV's anchor
            k // 2 (pixel i sees i - k // 2 .. i + (k - 1) // 2), see :mod:`mixcl_arch.baselines.guided_filter`.
        gf_border (str): Guided filter border: 'clip' (clipped windows) or 'reflect101' (as cv2.boxFilter).
        gf_eps (float): Guided filter regularisation.
        t0 (float): Lower bound on t in the recovery.
        a_min (float): Lower bound on A's channels when dividing by A.
        clamp (bool): Clamp J to [0, 1].
        return_all (bool): Return a dict with every intermediate instead of J.

    Returns:
        Tensor | dict: J (B, 3, H, W); or with ``return_all`` a dict with 'J' (B,3,H,W), 'A' (B,3),
        'dark' (B,1,H,W) dark channel of the input, 't_raw' and 't' (B,1,H,W) coarse and refined transmission
        (refined t is clamped to [0, 1]), and 'depth' (B,1,H,W) relative depth -log(max(t, t0)).
    """
    check_image(x)
    in_dtype = x.dtype
    if in_dtype not in (torch.float32, torch.float64):
        x = x.float()
    dark = dark_channel(x, patch_radius)
    A = estimate_atmospheric_light(x, dark, top_ratio, atmo_mode)
    t_raw = estimate_transmission(x, A, omega, patch_radius, a_min)
    t = guided_filter(grey(x), t_raw, gf_radius, gf_eps, gf_window, gf_border).clamp(0.0, 1.0) if refine else t_raw
    a4 = A[:, :, None, None]
    t_div = t.clamp(min=float(t0))
    J = (x - a4) / t_div + a4
    if clamp:
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
        preset (str | None): A named option set of :data:`DCP_PRESETS` ('paper', 'lab_report'); ``params`` given
            with it override its values.
        **params: Any of :data:`DCP_DEFAULTS` (patch_radius, omega, top_ratio, atmo_mode, refine, gf_radius,
            gf_window, gf_border, gf_eps, t0, a_min, clamp). Strings such as '0.9' are accepted (CLI parsing);
            ``gf_window`` 'none' (or None) means "use gf_radius".

    Raises:
        ValueError: Unknown or out-of-range parameters, or an unavailable CUDA device.
    """

    name = 'dcp'
    num_params = 0
    net = None

    def __init__(self, device='cpu', preset=None, **params):
        unknown = sorted(set(params) - set(DCP_DEFAULTS))
        if unknown:
            raise ValueError(f'Unknown DCP option(s) {unknown}; allowed: {sorted(DCP_DEFAULTS)} and preset.')
        if preset is not None and preset not in DCP_PRESETS:
            raise ValueError(f'Unknown DCP preset {preset!r}; allowed: {sorted(DCP_PRESETS)}.')
        self.preset = preset
        p = dict(DCP_DEFAULTS)
        p.update(DCP_PRESETS.get(preset) or {})
        p.update(params)
        try:
            self.params = {
                'patch_radius': int(p['patch_radius']),
                'omega': float(p['omega']),
                'top_ratio': float(p['top_ratio']),
                'atmo_mode': str(p['atmo_mode']),
                'refine': to_bool(p['refine'], 'refine'),
                'gf_radius': int(p['gf_radius']),
                'gf_window': _optional_int(p['gf_window']),
                'gf_border': str(p['gf_border']),
                'gf_eps': float(p['gf_eps']),
                't0': float(p['t0']),
                'a_min': float(p['a_min']),
                'clamp': to_bool(p['clamp'], 'clamp'),
            }
        except (TypeError, ValueError) as err:
            raise ValueError(f'Bad DCP option value: {err}') from err
        q = self.params
        checks = [
            (q['patch_radius'] >= 0, 'patch_radius must be >= 0'),
            (0.0 < q['omega'] <= 1.0, 'omega must be in (0, 1]'),
            (0.0 < q['top_ratio'] <= 1.0, 'top_ratio must be in (0, 1]'),
            (q['atmo_mode'] in ATMO_MODES, f'atmo_mode must be one of {ATMO_MODES}'),
            (q['gf_radius'] >= 0, 'gf_radius must be >= 0'),
            (q['gf_window'] is None or q['gf_window'] >= 1, 'gf_window must be none or >= 1'),
            (q['gf_border'] in BORDERS, f'gf_border must be one of {BORDERS}'),
            (q['gf_eps'] > 0.0, 'gf_eps must be > 0'),
            (0.0 < q['t0'] <= 1.0, 't0 must be in (0, 1]'),
            (q['a_min'] > 0.0, 'a_min must be > 0'),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(f'{msg}; got {q}.')
        if device is None or str(device) == 'auto':
            device = 'cuda' if torch.cuda.is_available() else 'cpu'
        self.device = torch.device(device)
        if self.device.type == 'cuda' and not torch.cuda.is_available():
            raise ValueError(f'DCP device {self.device} requested but CUDA is not available.')

    @torch.no_grad()
    def estimate(self, x):
        """Every DCP intermediate for a batch, on the input's device.

        Args:
            x (Tensor): (B, 3, H, W) in [0, 1].

        Returns:
            dict: see :func:`dcp_dehaze` with ``return_all=True`` ('J', 'A', 'dark', 't_raw', 't', 'depth').
        """
        check_image(x)
        out = dcp_dehaze(x.to(self.device), return_all=True, **self.params)
        return {k: v.to(x.device) for k, v in out.items()}

    @torch.no_grad()
    def __call__(self, x):
        """(B, 3, H, W) hazy in [0, 1] -> (B, 3, H, W) dehazed in [0, 1], on the input's device and dtype."""
        check_image(x)
        return dcp_dehaze(x.to(self.device), **self.params).to(x.device)

    def __repr__(self):
        return f'DCPRestorer(device={self.device}, preset={self.preset}, {self.params})'


def _optional_int(v):
    """An int option that may be None, or 'none' / '' from the command line."""
    if v is None or (isinstance(v, str) and v.strip().lower() in ('', 'none', 'null')):
        return None
    return int(v)

