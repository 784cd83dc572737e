"""Image reading and writing for user photos (the inference CLI and the benchmark scripts).

Reading accepts 8-bit and 16-bit (and float TIFF) images with 1, 2, 3 or 4 channels and returns float32 RGB in
[0, 1] plus an :class:`ImageInfo` describing what to restore on writing:

- grayscale (1 channel, or gray + alpha) is replicated to RGB for the network, and written back as grayscale
  (ITU-R BT.601 luma of the result) so the output has the same mode as the input;
- an alpha channel is carried through unchanged (``alpha='keep'``) or dropped (``alpha='drop'``); the colour under
  transparent pixels is dehazed as it is, without compositing;
- the bit depth is kept: 16-bit input gives a 16-bit output when the output format can hold it (PNG, TIFF);
  :func:`output_extension` picks PNG otherwise.

JPEG files are decoded with their EXIF orientation applied, like every photo viewer does. All writes are atomic
(temporary file in the same folder, fsync, ``os.replace``).
"""
import os
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from mixcl_arch.utils.file_io import atomic_write_bytes

IMG_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.webp', '.bmp', '.tif', '.tiff')
SIXTEEN_BIT_EXTENSIONS = ('.png', '.tif', '.tiff')
ALPHA_EXTENSIONS = ('.png', '.webp', '.tif', '.tiff')
ALPHA_MODES = ('keep', 'drop')


@dataclass
class ImageInfo:
    """What :func:`read_image` found about an image file.

    Attributes:
        bit_depth (int): 8 or 16 (float TIFFs report 16 and are written as 16-bit).
        gray (bool): The file was single-channel (or gray + alpha).
        alpha (np.ndarray | None): (H, W) float32 alpha in [0, 1], or None.
        height (int): Image height.
        width (int): Image width.
    """
    bit_depth: int
    gray: bool
    alpha: object
    height: int
    width: int


def is_image_file(path):
    """True if ``path`` has one of :data:`IMG_EXTENSIONS` (case-insensitive)."""
    return os.path.splitext(str(path))[1].lower() in IMG_EXTENSIONS


def _to_float(img, path):
    if img.dtype == np.uint8:
        return img.astype(np.float32) / 255.0, 8
    if img.dtype == np.uint16:
        return img.astype(np.float32) / 65535.0, 16
    if img.dtype in (np.float32, np.float64):
        return np.clip(np.nan_to_num(img.astype(np.float32)), 0, 1), 16
    raise ValueError(f'{path}: unsupported pixel type {img.dtype} (expected 8-bit, 16-bit or float).')


def _png_color_type(data):
    """PNG colour type from the IHDR chunk (0 gray, 2 RGB, 3 palette, 4 gray + alpha, 6 RGBA), or None."""
    if data.size > 25 and bytes(data[:8]) == b'\x89PNG\r\n\x1a\n' and bytes(data[12:16]) == b'IHDR':
        return int(data[25])
    return None


def read_image(path):
    """Read an image file as float32 RGB.

    Args:
        path (str): Image file.

    Returns:
        tuple[np.ndarray, ImageInfo]: (H, W, 3) float32 RGB in [0, 1], and the file's properties.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: If the file cannot be decoded or has an unsupported layout.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f'Image file not found: {path}')
    data = np.fromfile(path, dtype=np.uint8)
    if data.size == 0:
        raise ValueError(f'{path}: empty file.')
    ext = os.path.splitext(path)[1].lower()
    # UNCHANGED keeps alpha and 16 bits but ignores EXIF orientation; JPEG has no alpha, so decode it oriented
    flags = cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR if ext in ('.jpg', '.jpeg') else cv2.IMREAD_UNCHANGED
    try:
        img = cv2.imdecode(data, flags)
    except cv2.error as err:
        raise ValueError(f'{path}: cannot decode image ({err}).') from err
    if img is None or img.size == 0:
        raise ValueError(f'{path}: cannot decode image (corrupt, truncated or not a supported format).')
    img, bit_depth = _to_float(img, path)
    if img.ndim == 2:
        img = img[:, :, None]
    channels = img.shape[2]
    alpha = None
    if channels == 4 and _png_color_type(data) == 4:  # OpenCV expands gray + alpha PNGs to BGRA
        img, channels = img[:, :, [0, 3]], 2
    if channels == 1:
        rgb, gray = np.repeat(img, 3, axis=2), True
    elif channels == 2:
        rgb, alpha, gray = np.repeat(img[:, :, :1], 3, axis=2), img[:, :, 1], True
    elif channels == 3:
        rgb, gray = img[:, :, ::-1], False
    elif channels == 4:
        rgb, alpha, gray = img[:, :, 2::-1], img[:, :, 3], False
    else:
        raise ValueError(f'{path}: unsupported number of channels {channels} (expected 1, 2, 3 or 4).')
    info = ImageInfo(bit_depth=bit_depth, gray=gray, alpha=alpha, height=img.shape[0], width=img.shape[1])
    return np.ascontiguousarray(rgb, dtype=np.float32), info


def output_extension(in_ext, info, ext='auto', alpha='keep'):
    """Choose the output file extension.

    Args:
        in_ext (str): Input extension, e.g. '.jpg'.
        info (ImageInfo): From :func:`read_image`.
        ext (str): 'auto' keeps ``in_ext`` unless it cannot hold the image's bit depth or kept alpha, in which
            case '.png' is used; anything else (e.g. 'png' or '.jpg') is used as given.
        alpha (str): 'keep' or 'drop'.

    Returns:
        str: Extension with a leading dot, lower case.
    """
    if ext != 'auto':
        ext = ext.lower()
        return ext if ext.startswith('.') else '.' + ext
    in_ext = in_ext.lower()
    if info.bit_depth == 16 and in_ext not in SIXTEEN_BIT_EXTENSIONS:
        return '.png'
    if alpha == 'keep' and info.alpha is not None and in_ext not in ALPHA_EXTENSIONS:
        return '.png'
    return in_ext


def _quantize(img, bit_depth):
    if bit_depth == 16:
        return np.round(np.clip(img, 0, 1) * 65535.0).astype(np.uint16)
    return np.round(np.clip(img, 0, 1) * 255.0).astype(np.uint8)


def encode_image(rgb, path, info=None, alpha='keep', quality=95):
    """Encode float RGB to the bytes of an image file whose format follows ``path``'s extension.

    Args:
        rgb (np.ndarray): (H, W, 3) float RGB in [0, 1].
        path (str): Target path (only its extension is used).
        info (ImageInfo | None): Restores gray mode, alpha and bit depth; None means 8-bit RGB.
        alpha (str): 'keep' (write ``info.alpha`` when the format can hold it) or 'drop'.
        quality (int): JPEG / WebP quality.

    Returns:
        bytes: The encoded file.
    """
    if alpha not in ALPHA_MODES:
        raise ValueError(f'alpha must be one of {ALPHA_MODES}, got {alpha!r}.')
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f'Expected an (H, W, 3) RGB array, got shape {rgb.shape}.')
    ext = os.path.splitext(str(path))[1].lower()
    if ext not in IMG_EXTENSIONS:
        raise ValueError(f'{path}: unsupported output extension {ext!r}; use one of {IMG_EXTENSIONS}.')
    bit_depth = info.bit_depth if info is not None and ext in SIXTEEN_BIT_EXTENSIONS else 8
    if info is not None and info.gray:
        out = cv2.cvtColor(np.ascontiguousarray(rgb, dtype=np.float32), cv2.COLOR_RGB2GRAY)[:, :, None]
    else:
        out = rgb[:, :, ::-1]
    if alpha == 'keep' and info is not None and info.alpha is not None and ext in ALPHA_EXTENSIONS:
        out = np.concatenate([out, info.alpha[:, :, None]], axis=2)
        if out.shape[2] == 2:  # encoders take gray + alpha as BGRA
            out = np.concatenate([np.repeat(out[:, :, :1], 3, axis=2), out[:, :, 1:]], axis=2)
    out = _quantize(np.ascontiguousarray(out), bit_depth)
    params = []
    if ext in ('.jpg', '.jpeg'):
        params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
    elif ext == '.webp':
        params = [cv2.IMWRITE_WEBP_QUALITY, int(quality)]
    ok, buf = cv2.imencode(ext, out, params)
    if not ok:
        raise ValueError(f'{path}: OpenCV could not encode a {out.shape} {out.dtype} image as {ext}.')
    return buf.tobytes()


def write_image(rgb, path, info=None, alpha='keep', quality=95):
    """Encode (see :func:`encode_image`) and write atomically to ``path``."""
    atomic_write_bytes(encode_image(rgb, path, info, alpha, quality), path)


def side_by_side(left, right, gap=4):
    """Join two (H, W, 3) float images horizontally with a white ``gap``-pixel divider.

    Returns:
        np.ndarray: (H, W_left + gap + W_right, 3) float32.
    """
    if left.shape[0] != right.shape[0]:
        raise ValueError(f'side_by_side needs equal heights, got {left.shape} and {right.shape}.')
    divider = np.ones((left.shape[0], gap, 3), dtype=np.float32)
    return np.concatenate([left.astype(np.float32), divider, right.astype(np.float32)], axis=1)


def img2tensor01(img):
    """(H, W, 3) float RGB array -> (1, 3, H, W) float32 tensor."""
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1), dtype=np.float32))[None]


def tensor2img01(tensor):
    """(1, 3, H, W) or (3, H, W) tensor -> (H, W, 3) float32 RGB array clamped to [0, 1]."""
    if tensor.dim() == 4:
        if tensor.shape[0] != 1:
            raise ValueError(f'tensor2img01 takes one image, got a batch of shape {tuple(tensor.shape)}.')
        tensor = tensor[0]
    return tensor.detach().float().clamp(0, 1).cpu().numpy().transpose(1, 2, 0).copy()
