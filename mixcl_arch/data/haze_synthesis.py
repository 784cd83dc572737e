"""Haze synthesis with the atmospheric scattering model, depth I/O, and the names of synthesised hazy images.

The physics (Koschmieder / McCartney model as used by RESIDE):

    I(x) = J(x) * t(x) + A * (1 - t(x)),    t(x) = exp(-beta * d(x))

with J the clear image in [0, 1], A the global atmospheric light, beta the scattering coefficient and d the scene depth.

Depth conventions used across the project (see docs/datasets.md):

* ``.npy``: float array (H, W) in any unit (metres for real depth maps; pixels for disparities).
* ``.png``: 16-bit single-channel PNG; value / ``png_scale`` is the depth (default 1000: millimetres -> metres).
  A value of 0 means invalid.
* ``.pfm``: Middlebury portable float map (the Middlebury 2014 ``disp0.pfm`` format); ``inf`` means invalid.
* disparities are converted with ``depth = f * baseline / (disp + doffs)``.

The haze model sees ``d = depth_scale * depth / max(depth)`` by default (``depth_norm='max'``): the depth map keeps
its real ratios but its far end is mapped to ``depth_scale`` so that the RESIDE beta ranges give comparable haze for
images of any size and unit. ``depth_norm='none'`` uses the (metric) depth as it is, times ``depth_scale``.

Hazy images made from a clear image ``<stem>`` are named ``<stem>_<version>_<A>_<beta>`` (:func:`haze_name`);
:data:`HAZE_NAME_REGEX` parses such a name back to the clear stem (the dataset's ``gt_name_rule: haze_pairs``).
"""
import os.path as osp
import re
import zlib

import cv2
import numpy as np

from mixcl_arch.utils.file_io import atomic_write_bytes
from mixcl_arch.utils.image_io import decode_raw

__all__ = [
    'DOMAIN_PRESETS', 'HAZE_NAME_REGEX', 'haze_name', 'clear_stem', 'transmission', 'synthesize_haze',
    'disparity_to_depth', 'fill_invalid_depth', 'read_pfm', 'write_pfm', 'load_depth_file', 'pseudo_depth',
    'haze_depth', 'sample_haze_params', 'image_rng'
]

# <clear stem>_<version>_<A>_<beta> as written by haze_name; the clear stem may itself contain underscores
HAZE_NAME_REGEX = r'^(.*)_\d+_\d+\.\d+_\d+\.\d+$'

# Per-domain sampling ranges. beta/A follow RESIDE (Li et al., "Benchmarking Single-Image Dehazing and Beyond",
# TIP 2019): ITS (indoor) beta in [0.6, 1.8], A in [0.7, 1.0]; OTS (outdoor) beta in [0.04, 0.2], A in [0.8, 1.0].
# depth_scale is the depth (in the haze model's units) of the farthest pixel: 1 for indoor relative depth, 10
# "metres-like" units for outdoor so the small OTS betas still give visible haze.
DOMAIN_PRESETS = {
    'indoor': {
        'beta': (0.6, 1.8),
        'A': (0.7, 1.0),
        'depth_scale': 1.0
    },
    'outdoor': {
        'beta': (0.04, 0.2),
        'A': (0.8, 1.0),
        'depth_scale': 10.0
    },
}


def haze_name(stem, version, A, beta):
    """Name (without extension) of hazy version ``version`` of the clear image ``stem``, made with ``A`` and ``beta``.

    Example: ``haze_name('sub/0001', 2, 0.9, 0.08)`` -> ``'sub/0001_2_0.90_0.080'``.
    """
    return f'{stem}_{int(version)}_{A:.2f}_{beta:.3f}'


def clear_stem(hazy_stem):
    """The clear image's stem of a :func:`haze_name` name (``'sub/0001_2_0.90_0.080'`` -> ``'sub/0001'``), or None
    when ``hazy_stem`` is not such a name."""
    match = re.match(HAZE_NAME_REGEX, hazy_stem)
    return match.group(1) if match else None


# ----------------------------------------------------------------------------------------------------------------
# physics
# ----------------------------------------------------------------------------------------------------------------
def transmission(depth, beta):
    """Transmission map t = exp(-beta * d).

    Args:
        depth (np.ndarray): (H, W) non-negative depth in the haze model's units.
        beta (float): Scattering coefficient (>= 0).

    Returns:
        np.ndarray: (H, W) float32 transmission in (0, 1].
    """
    if beta < 0:
        raise ValueError(f'beta must be >= 0, got {beta}')
    depth = np.asarray(depth, dtype=np.float32)
    if np.any(depth < 0) or not np.all(np.isfinite(depth)):
        raise ValueError('depth must be finite and >= 0 (fill invalid pixels first, see fill_invalid_depth)')
    return np.exp(-float(beta) * depth).astype(np.float32)


def synthesize_haze(clear, depth, beta, A):
    """Apply the atmospheric scattering model I = J * t + A * (1 - t).

    Args:
        clear (np.ndarray): (H, W, C) float clear image J in [0, 1].
        depth (np.ndarray): (H, W) depth d >= 0 (same H, W as ``clear``).
        beta (float): Scattering coefficient.
        A (float | sequence): Atmospheric light, a scalar or one value per channel, in [0, 1].

    Returns:
        tuple[np.ndarray, np.ndarray]: hazy image (H, W, C) float32 in [0, 1] and transmission (H, W) float32.
    """
    clear = np.asarray(clear, dtype=np.float32)
    if clear.ndim != 3:
        raise ValueError(f'clear image must be (H, W, C), got shape {clear.shape}')
    if tuple(np.shape(depth)) != clear.shape[:2]:
        raise ValueError(f'depth shape {tuple(np.shape(depth))} does not match image shape {clear.shape[:2]}')
    A = np.asarray(A, dtype=np.float32).reshape(-1)
    if A.size not in (1, clear.shape[2]):
        raise ValueError(f'A must be a scalar or have {clear.shape[2]} values, got {A.size}')
    t = transmission(depth, beta)[..., None]
    hazy = clear * t + A.reshape(1, 1, -1) * (1.0 - t)
    return np.clip(hazy, 0.0, 1.0).astype(np.float32), t[..., 0]


# ----------------------------------------------------------------------------------------------------------------
# depth
# ----------------------------------------------------------------------------------------------------------------
def disparity_to_depth(disp, focal, baseline, doffs=0.0):
    """Convert a disparity map to depth with depth = focal * baseline / (disp + doffs).

    Args:
        disp (np.ndarray): (H, W) disparity in pixels; non-finite values mark invalid pixels.
        focal (float): Focal length in pixels.
        baseline (float): Camera baseline (its unit is the depth's unit, e.g. mm for Middlebury).
        doffs (float): x-difference of the principal points (Middlebury ``doffs``), in pixels.

    Returns:
        np.ndarray: (H, W) float32 depth with ``nan`` where the disparity is invalid.
    """
    disp = np.asarray(disp, dtype=np.float64)
    denom = disp + float(doffs)
    valid = np.isfinite(denom) & (denom > 0)
    depth = np.full(disp.shape, np.nan, dtype=np.float64)
    depth[valid] = float(focal) * float(baseline) / denom[valid]
    return depth.astype(np.float32)


def fill_invalid_depth(depth, name='depth'):
    """Fill non-finite or non-positive depth pixels by inpainting from valid neighbours.

    Args:
        depth (np.ndarray): (H, W) depth; nan/inf/<=0 are invalid.
        name (str): Name used in error messages (e.g. the depth file).

    Returns:
        tuple[np.ndarray, float]: filled (H, W) float32 depth and the fraction of pixels that were invalid.
    """
    depth = np.asarray(depth, dtype=np.float32)
    invalid = ~np.isfinite(depth) | (depth <= 0)
    frac = float(invalid.mean())
    if frac == 0:
        return depth, 0.0
    if frac == 1:
        raise ValueError(f'{name}: no valid depth pixel (all nan/inf/<=0)')
    dmax = float(depth[~invalid].max())
    # inpaint in a normalised 8-bit-free float domain; invalid pixels start at the far value
    work = np.where(invalid, dmax, depth).astype(np.float32) / dmax
    filled = cv2.inpaint(work, invalid.astype(np.uint8), 5, cv2.INPAINT_TELEA) * dmax
    filled = np.where(invalid, filled, depth)
    filled = np.clip(filled, float(depth[~invalid].min()), dmax)
    return filled.astype(np.float32), frac


def read_pfm(path):
    """Read a PFM (portable float map) file, as written by Middlebury for disparities.

    Args:
        path (str): ``.pfm`` file.

    Returns:
        np.ndarray: (H, W) or (H, W, 3) float32, top row first.
    """
    with open(path, 'rb') as f:
        header = f.readline().strip()
        if header not in (b'PF', b'Pf'):
            raise ValueError(f'{path}: not a PFM file (header {header!r}, expected PF or Pf)')
        channels = 3 if header == b'PF' else 1
        dims = f.readline().decode('ascii')
        while dims.startswith('#'):
            dims = f.readline().decode('ascii')
        match = re.match(r'^\s*(\d+)\s+(\d+)\s*$', dims)
        if match is None:
            raise ValueError(f'{path}: malformed PFM size line {dims!r}')
        width, height = int(match.group(1)), int(match.group(2))
        scale = float(f.readline().decode('ascii').strip())
        endian = '<' if scale < 0 else '>'
        data = np.frombuffer(f.read(), dtype=endian + 'f4')
    expected = width * height * channels
    if data.size < expected:
        raise ValueError(f'{path}: truncated PFM ({data.size} floats, expected {expected})')
    data = data[:expected].reshape(height, width, channels) if channels == 3 else data[:expected].reshape(
        height, width)
    return np.ascontiguousarray(np.flipud(data)).astype(np.float32)


def write_pfm(path, array):
    """Write a (H, W) float array as a little-endian grayscale PFM file (atomically)."""
    array = np.asarray(array, dtype='<f4')
    if array.ndim != 2:
        raise ValueError(f'write_pfm expects a (H, W) array, got shape {array.shape}')
    header = f'Pf\n{array.shape[1]} {array.shape[0]}\n-1.0\n'.encode('ascii')
    atomic_write_bytes(header + np.flipud(array).tobytes(), path)


def load_depth_file(path, kind='depth', png_scale=1000.0, focal=None, baseline=None, doffs=0.0):
    """Load a per-image depth or disparity file and return depth (invalid pixels as nan).

    Args:
        path (str): ``.npy``, ``.png`` (16-bit, value / png_scale) or ``.pfm`` file.
        kind (str): 'depth' or 'disparity'. Disparities need ``focal`` and ``baseline``.
        png_scale (float): Divisor for 16-bit PNG values (PNG value 0 = invalid).
        focal (float | None): Focal length in pixels (disparity only).
        baseline (float | None): Baseline (disparity only).
        doffs (float): Principal point offset in pixels (disparity only).

    Returns:
        np.ndarray: (H, W) float32 depth, nan where invalid.
    """
    if not osp.isfile(path):
        raise FileNotFoundError(f'Depth file not found: {path}')
    ext = osp.splitext(path)[1].lower()
    if ext == '.npy':
        arr = np.load(path).astype(np.float32)
    elif ext == '.pfm':
        arr = read_pfm(path)
    elif ext == '.png':
        raw = decode_raw(np.fromfile(path, dtype=np.uint8), path)
        if raw.dtype != np.uint16:
            raise ValueError(f'{path}: depth PNG must be 16-bit single channel, got dtype {raw.dtype}')
        arr = raw.astype(np.float32)
        arr[raw == 0] = np.nan
        arr /= float(png_scale)
    else:
        raise ValueError(f'{path}: unsupported depth format {ext!r} (use .npy, 16-bit .png or .pfm)')
    arr = np.squeeze(arr)
    if arr.ndim != 2:
        raise ValueError(f'{path}: depth/disparity must be a single-channel (H, W) map, got shape {arr.shape}')
    if kind == 'disparity':
        if focal is None or baseline is None:
            raise ValueError(f'{path}: disparity files need focal and baseline (--focal, --baseline)')
        return disparity_to_depth(arr, focal, baseline, doffs)
    if kind != 'depth':
        raise ValueError(f"kind must be 'depth' or 'disparity', got {kind!r}")
    return arr


def pseudo_depth(clear, vertical_weight=0.6, near=0.2):
    """A pseudo-depth for images without a depth map.

    A blend of two cues, each normalised to [0, 1]: a vertical-position prior (rows at the top are farther; true for
    most photographs taken upright) and the smoothed dark channel of the clear image (min over RGB and a 15x15
    patch, then a large box blur). Bright, colourless regions such as sky or white walls get a high dark channel and
    are pushed far, which is where haze is most visible in real scenes. The blend is rescaled to [near, 1].

    Args:
        clear (np.ndarray): (H, W, 3) float RGB in [0, 1].
        vertical_weight (float): Weight of the vertical prior; the dark channel gets ``1 - vertical_weight``.
        near (float): Depth of the nearest pixel relative to the farthest (1).

    Returns:
        np.ndarray: (H, W) float32 relative depth in [near, 1].
    """
    h, w = clear.shape[:2]
    vertical = np.repeat(np.linspace(1.0, 0.0, h, dtype=np.float32)[:, None], w, axis=1)
    patch = max(3, (min(h, w) // 32) | 1)
    dark = cv2.erode(clear.min(axis=2).astype(np.float32), np.ones((patch, patch), np.uint8))
    blur = max(3, (min(h, w) // 8) | 1)
    dark = cv2.blur(dark, (blur, blur))
    span = float(dark.max() - dark.min())
    dark = (dark - dark.min()) / span if span > 1e-6 else np.zeros_like(dark)
    mix = vertical_weight * vertical + (1.0 - vertical_weight) * dark
    mix = (mix - mix.min()) / max(float(mix.max() - mix.min()), 1e-6)
    return (near + (1.0 - near) * mix).astype(np.float32)


def haze_depth(depth, depth_scale=1.0, depth_norm='max'):
    """Map a (filled) depth map to the depth the haze model sees.

    Args:
        depth (np.ndarray): (H, W) positive depth.
        depth_scale (float): Depth of the farthest pixel after normalisation (``'max'``) or a plain multiplier
            (``'none'``).
        depth_norm (str): 'max' (divide by the maximum, keeps ratios) or 'none' (metric depth used as is).

    Returns:
        np.ndarray: (H, W) float32 depth.
    """
    depth = np.asarray(depth, dtype=np.float32)
    if depth_norm == 'max':
        return depth / float(depth.max()) * float(depth_scale)
    if depth_norm == 'none':
        return depth * float(depth_scale)
    raise ValueError(f"depth_norm must be 'max' or 'none', got {depth_norm!r}")


def image_rng(seed, key):
    """A numpy Generator seeded by (seed, crc32(key)): per-image streams that do not depend on the file order."""
    return np.random.default_rng([int(seed), zlib.crc32(str(key).encode('utf-8'))])


def sample_haze_params(rng, domain, presets=None):
    """Sample (beta, A) uniformly from a domain's ranges.

    Args:
        rng (np.random.Generator): Random generator.
        domain (str): Key of ``presets`` (e.g. 'indoor' or 'outdoor').
        presets (dict | None): Ranges per domain; defaults to :data:`DOMAIN_PRESETS`.

    Returns:
        tuple[float, float]: beta, A.
    """
    presets = DOMAIN_PRESETS if presets is None else presets
    if domain not in presets:
        raise ValueError(f'Unknown domain {domain!r}; known: {sorted(presets)}')
    lo_b, hi_b = presets[domain]['beta']
    lo_a, hi_a = presets[domain]['A']
    return float(rng.uniform(lo_b, hi_b)), float(rng.uniform(lo_a, hi_a))
