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

Decompression bombs: before anything is decoded, the pixel count is read from the file header (PNG, JPEG, WebP,
BMP, TIFF, PPM/PGM; :func:`header_size`) and files above ``max_pixels`` (default :data:`DEFAULT_MAX_PIXELS`, 200 MP,
or the environment variable ``MIXCL_MAX_PIXELS``) are refused, so OpenCV never allocates for a crafted header
declaring, say, 30000 x 30000 pixels. A file whose size cannot be read from its header is refused too.
"""
import os
import struct
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from mixcl_arch.utils.file_io import atomic_write_bytes

IMG_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.webp', '.bmp', '.tif', '.tiff')
SIXTEEN_BIT_EXTENSIONS = ('.png', '.tif', '.tiff')
ALPHA_EXTENSIONS = ('.png', '.webp', '.tif', '.tiff')
ALPHA_MODES = ('keep', 'drop')


def _max_pixels_from_env():
    raw = os.environ.get('MIXCL_MAX_PIXELS', '200000000')
    try:
        value = int(float(raw))
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f'MIXCL_MAX_PIXELS={raw!r}: expected a positive pixel count such as 200000000.')
    return value


DEFAULT_MAX_PIXELS = _max_pixels_from_env()


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


def _jpeg_size(b):
    i = 2
    while i + 9 < len(b):
        if b[i] != 0xFF:
            return None
        marker = b[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # markers without a length
            i += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image or start of scan before any frame header
            return None
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # SOF0..SOF15: P, height, width
            h, w = struct.unpack('>HH', b[i + 5:i + 9])
            return w, h
        i += 2 + struct.unpack('>H', b[i + 2:i + 4])[0]
    return None


def _tiff_size(b):
    end = '<' if b[:2] == b'II' else '>'
    big = struct.unpack(end + 'H', b[2:4])[0] == 43  # BigTIFF: 8-byte offsets, 20-byte entries
    head, count_fmt, entry, off_fmt = (16, 'Q', 20, 'Q') if big else (8, 'H', 12, 'I')
    (ifd,) = struct.unpack(end + off_fmt, b[head - (8 if big else 4):head])
    (n,) = struct.unpack(end + count_fmt, b[ifd:ifd + struct.calcsize(count_fmt)])
    first = ifd + struct.calcsize(count_fmt)
    size = {}
    for k in range(n):
        e = first + k * entry
        tag, typ = struct.unpack(end + 'HH', b[e:e + 4])
        if tag in (256, 257):  # ImageWidth, ImageLength as SHORT, LONG or LONG8
            val = e + (12 if big else 8)
            fmt = {3: 'H', 4: 'I', 16: 'Q'}.get(typ)
            if fmt is None:
                return None
            size[tag] = struct.unpack(end + fmt, b[val:val + struct.calcsize(fmt)])[0]
    return (size[256], size[257]) if len(size) == 2 else None


def _pnm_size(b):
    tokens, i = [], 2
    while len(tokens) < 2 and i < len(b):
        c = b[i:i + 1]
        if c == b'#':
            i = b.find(b'\n', i)
            if i < 0:
                return None
        elif c.isspace():
            i += 1
            continue
        else:
            j = i
            while j < len(b) and not b[j:j + 1].isspace() and b[j:j + 1] != b'#':
                j += 1
            tokens.append(b[i:j])
            i = j
            continue
        i += 1
    return (int(tokens[0]), int(tokens[1])) if len(tokens) == 2 and all(t.isdigit() for t in tokens) else None


def header_size(data):
    """Width and height declared by an image header, without decoding any pixel.

    Args:
        data (bytes | np.ndarray): The file's bytes (only the first 64 KiB are read, except for JPEG and TIFF).

    Returns:
        tuple[int, int] | None: (width, height), or None when the format is not PNG, JPEG, WebP, BMP, TIFF or
        PPM/PGM/PBM or the header is broken.
    """
    head = bytes(data[:4])
    # JPEG frame headers and TIFF directories can sit anywhere in the file; the other headers are at the start
    b = bytes(data) if head[:2] == b'\xff\xd8' or head[:2] in (b'II', b'MM') else bytes(data[:1 << 16])
    try:
        if b[:8] == b'\x89PNG\r\n\x1a\n' and b[12:16] == b'IHDR':
            return struct.unpack('>II', b[16:24])
        if b[:2] == b'\xff\xd8':
            return _jpeg_size(b)
        if b[:4] == b'RIFF' and b[8:12] == b'WEBP':
            chunk = b[12:16]
            if chunk == b'VP8 ' and b[23:26] == b'\x9d\x01\x2a':
                w, h = struct.unpack('<HH', b[26:30])
                return w & 0x3FFF, h & 0x3FFF
            if chunk == b'VP8L' and b[20] == 0x2F:
                bits = struct.unpack('<I', b[21:25])[0]
                return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
            if chunk == b'VP8X':
                return int.from_bytes(b[24:27], 'little') + 1, int.from_bytes(b[27:30], 'little') + 1
            return None
        if b[:2] == b'BM':
            if struct.unpack('<I', b[14:18])[0] == 12:  # OS/2 BITMAPCOREHEADER
                return struct.unpack('<HH', b[18:22])
            w, h = struct.unpack('<ii', b[18:26])
            return abs(w), abs(h)
        if b[:4] in (b'II*\x00', b'MM\x00*', b'II+\x00', b'MM\x00+'):
            return _tiff_size(b)
        if b[:1] == b'P' and b[1:2] in b'123456':
            return _pnm_size(b)
    except (struct.error, IndexError, KeyError):
        return None
    return None


def check_pixels(data, name, max_pixels=None):
    """Refuse an image whose header declares more than ``max_pixels`` pixels (or cannot be read), before decoding.

    Args:
        data (bytes | np.ndarray): The file's bytes.
        name (str): Named in the error.
        max_pixels (int | None): Limit; None means :data:`DEFAULT_MAX_PIXELS`.

    Returns:
        tuple[int, int]: (width, height) from the header.

    Raises:
        ValueError: Oversized image or no readable size in the header.
    """
    limit = DEFAULT_MAX_PIXELS if max_pixels is None else int(max_pixels)
    size = header_size(data)
    if size is None:
        raise ValueError(f'{name}: cannot read the image size from the header (corrupt, truncated or not a '
                         'PNG/JPEG/WebP/BMP/TIFF/PNM file); not decoded.')
    w, h = size
    if w * h > limit:
        raise ValueError(f'{name}: {w}x{h} = {w * h / 1e6:.1f} MP exceeds the limit of {limit / 1e6:g} MP '
                         f'({limit} pixels; --max-pixels or MIXCL_MAX_PIXELS raise it); not decoded.')
    return size


def read_image(path, max_pixels=None):
    """Read an image file as float32 RGB.

    Args:
        path (str): Image file.
        max_pixels (int | None): Largest accepted width x height, checked from the header before decoding; None
            means :data:`DEFAULT_MAX_PIXELS`.

    Returns:
        tuple[np.ndarray, ImageInfo]: (H, W, 3) float32 RGB in [0, 1], and the file's properties.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: If the file is too large, cannot be decoded or has an unsupported layout.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f'Image file not found: {path}')
    data = np.fromfile(path, dtype=np.uint8)
    if data.size == 0:
        raise ValueError(f'{path}: empty file.')
    check_pixels(data, path, max_pixels)
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
