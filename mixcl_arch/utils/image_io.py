"""Image I/O and image-folder discovery for the whole project: the inference CLI, the datasets, the LMDB tools,
the scripts and the benchmarks all read images and list folders through this module.

One decoder, :func:`decode_image` (file path, bytes or a numpy buffer), returns float32 RGB in [0, 1] and, on
request, an :class:`ImageInfo` describing what to restore on writing:

- 8-bit, 16-bit and float (TIFF) images with 1, 2, 3 or 4 channels; grayscale (1 channel, or gray + alpha) is
  replicated to RGB for the network, and written back as grayscale (ITU-R BT.601 luma of the result);
- an alpha channel is carried through unchanged (``alpha='keep'``) or dropped (``alpha='drop'``); the colour under
  transparent pixels is dehazed as it is, without compositing;
- CMYK JPEG and TIFF files are converted to RGB (OpenCV), never read as RGB + alpha;
- the EXIF orientation is applied, as every photo viewer does, to every file that cannot hold an alpha channel
  (JPEG, PNM, PNG and WebP without alpha) and to TIFF; files with alpha are decoded with OpenCV's
  ``IMREAD_UNCHANGED``, which keeps the alpha but ignores the orientation of PNG / WebP;
- the bit depth is kept: 16-bit input gives a 16-bit output when the output format can hold it (PNG, TIFF);
  :func:`output_extension` picks PNG otherwise.

All writes are atomic (temporary file in the same folder, fsync, ``os.replace``).

Decompression bombs: before anything is decoded, the pixel count is read from the file header (PNG, JPEG, WebP,
BMP, TIFF, PPM/PGM; :func:`header_size`) and files above ``max_pixels`` (default :data:`DEFAULT_MAX_PIXELS`, 200 MP,
or the environment variable ``MIXCL_MAX_PIXELS``) are refused, so OpenCV never allocates for a crafted header
declaring, say, 30000 x 30000 pixels. A file whose size cannot be read from its header is refused too.

Discovery: :data:`IMG_EXTENSIONS` is the project's one list of image extensions, :func:`scan_images` its one folder
scan and :func:`image_key` its one image key (relative path without extension: feature stores, pair matching and
LMDB keys).
"""
import os
import struct
import urllib.parse
import zlib
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from mixcl_arch.utils.file_io import atomic_write_bytes

IMG_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.webp', '.bmp', '.tif', '.tiff', '.ppm', '.pgm')
SIXTEEN_BIT_EXTENSIONS = ('.png', '.tif', '.tiff')
ALPHA_EXTENSIONS = ('.png', '.webp', '.tif', '.tiff')
ALPHA_MODES = ('keep', 'drop')
NON_ASCII_MODES = ('keep', 'quote', 'error')


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
    """What :func:`decode_image` found about an image (``with_info=True``).

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


def scan_images(folder, recursive=True, followlinks=False, allow_empty=False, with_others=False):
    """Image files under ``folder`` as sorted '/'-separated relative paths; hidden files and folders are skipped.

    Args:
        folder (str): Folder to list.
        recursive (bool): Descend into sub-folders.
        followlinks (bool): Descend into symbolic links to folders (datasets assembled from links).
        allow_empty (bool): Return an empty list instead of raising when there is no image.
        with_others (bool): Also return the other (non-hidden) files, reported as skipped by the inference CLI.

    Returns:
        list[str] | tuple[list[str], list[str]]: The images; with ``with_others``, (images, other files).

    Raises:
        FileNotFoundError: Missing folder.
        ValueError: No images (unless ``allow_empty``).
    """
    if not os.path.isdir(folder):
        raise FileNotFoundError(f'Image folder not found: {folder}')
    images, others = [], []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=followlinks):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith('.')) if recursive else []
        rel_dir = os.path.relpath(dirpath, folder).replace(os.sep, '/')
        for name in filenames:
            if not name.startswith('.'):
                rel = name if rel_dir == '.' else f'{rel_dir}/{name}'
                (images if is_image_file(name) else others).append(rel)
    if not images and not allow_empty:
        raise ValueError(f'No images found in {folder} (extensions: {", ".join(IMG_EXTENSIONS)}).')
    return (sorted(images), sorted(others)) if with_others else sorted(images)


def image_key(rel_path, non_ascii='keep'):
    """Key of an image: its path relative to its folder, '/'-separated, without its image extension.

    The one key of the project: feature stores, hazy / GT matching, pair CSVs and LMDB databases
    (``sub/0001_0.8_0.2.png`` -> ``sub/0001_0.8_0.2``). Only an image extension is removed, so a name without one
    (``0025_0.8_0.2``) keeps its dotted tail.

    Args:
        rel_path (str): Relative path (or an LMDB key, which has no extension).
        non_ascii (str): 'keep' the name as it is; 'quote': percent-encode a non-ASCII key
            (``urllib.parse.quote``; ASCII keys are unchanged), as the LMDB writer does with ``--non-ascii quote``
            since BasicSR's FileClient encodes keys as ASCII; 'error': raise ValueError for a non-ASCII name.

    Returns:
        str: The key.
    """
    if non_ascii not in NON_ASCII_MODES:
        raise ValueError(f'non_ascii must be one of {NON_ASCII_MODES}, got {non_ascii!r}.')
    rel = str(rel_path).replace(os.sep, '/')
    stem, ext = os.path.splitext(rel)
    key = stem if ext.lower() in IMG_EXTENSIONS else rel
    if non_ascii == 'keep' or key.isascii():
        return key
    if non_ascii == 'quote':
        return urllib.parse.quote(key, safe="/_-.~+=,;:@!$&'()*")
    raise ValueError(f'{rel_path}: non-ASCII file name; BasicSR FileClient needs ASCII keys. Rename the file '
                     "or pass non_ascii='quote' (--non-ascii quote) to percent-encode it")


def image_size(path):
    """(h, w) of an image file as :func:`decode_image` returns it (EXIF rotation included), from its header only.

    Returns:
        tuple[int, int] | None: Height and width, or None when the header cannot be read.
    """
    from PIL import Image
    try:
        with Image.open(path) as im:
            # the stored size (Pillow versions differ on whether a TIFF's size is already oriented)
            w, h = (im.tag_v2[256], im.tag_v2[257]) if im.format == 'TIFF' else im.size
            alpha = im.mode in ('RGBA', 'LA', 'PA') or 'transparency' in im.info
            # decode_image applies the orientation except to PNG / WebP with alpha; a PNG's getexif() would decode
            # the whole image when the EXIF is not in its header, so only header EXIF counts there
            oriented = im.format in ('JPEG', 'TIFF') or (im.format in ('PNG', 'WEBP') and 'exif' in im.info
                                                         and not alpha)
            if oriented and im.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # 5-8 swap the axes
                w, h = h, w
        return int(h), int(w)
    except Exception:
        return None


def tail_ok(path):
    """Cheap truncation check: PNG must end with its IEND chunk, JPEG with the EOI marker (other formats: True)."""
    with open(path, 'rb') as f:
        head = f.read(8)
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - 64))
        tail = f.read()
    if head.startswith(b'\x89PNG\r\n\x1a\n'):
        return (b'IEND' + struct.pack('>I', zlib.crc32(b'IEND'))) in tail
    if head.startswith(b'\xff\xd8'):
        return b'\xff\xd9' in tail
    return True


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


def _tiff_tags(b, tags):
    """{tag: value} of the first image directory of a TIFF, for the integer tags in ``tags`` that it holds."""
    end = '<' if b[:2] == b'II' else '>'
    big = struct.unpack(end + 'H', b[2:4])[0] == 43  # BigTIFF: 8-byte offsets, 20-byte entries
    head, count_fmt, entry, off_fmt = (16, 'Q', 20, 'Q') if big else (8, 'H', 12, 'I')
    (ifd,) = struct.unpack(end + off_fmt, b[head - (8 if big else 4):head])
    (n,) = struct.unpack(end + count_fmt, b[ifd:ifd + struct.calcsize(count_fmt)])
    first = ifd + struct.calcsize(count_fmt)
    found = {}
    for k in range(n):
        e = first + k * entry
        tag, typ = struct.unpack(end + 'HH', b[e:e + 4])
        if tag in tags:  # a SHORT, LONG or LONG8 value
            val = e + (12 if big else 8)
            fmt = {3: 'H', 4: 'I', 16: 'Q'}.get(typ)
            if fmt is not None:
                found[tag] = struct.unpack(end + fmt, b[val:val + struct.calcsize(fmt)])[0]
    return found


def _tiff_size(b):
    size = _tiff_tags(b, (256, 257))  # ImageWidth, ImageLength
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


def _may_have_alpha(data):
    """Whether an encoded image can carry an alpha channel (PNG with alpha or tRNS, WebP with alpha, TIFF, BMP)."""
    b = bytes(data[:1 << 16])
    if b[:2] == b'\xff\xd8' or (b[:1] == b'P' and b[1:2] in b'123456'):  # JPEG, PNM
        return False
    if b[:8] == b'\x89PNG\r\n\x1a\n':
        if len(b) > 25 and b[25] in (4, 6):  # gray + alpha, RGBA
            return True
        pos = 8
        while pos + 8 <= len(b) and b[pos + 4:pos + 8] != b'IDAT':  # tRNS comes before the image data
            if b[pos + 4:pos + 8] == b'tRNS':
                return True
            pos += 12 + struct.unpack('>I', b[pos:pos + 4])[0]
        return False
    if b[:4] == b'RIFF' and b[8:12] == b'WEBP' and len(b) > 24:
        chunk = b[12:16]
        if chunk == b'VP8X':
            return bool(b[20] & 0x10)
        if chunk == b'VP8L':
            return bool((struct.unpack('<I', b[21:25])[0] >> 28) & 1)
        return False
    return True


def decode_raw(data, name, max_pixels=None):
    """Decode image bytes with OpenCV after the pixel-count check, keeping the stored channels and bit depth.

    EXIF orientation applied except to PNG / WebP files with alpha (see the module docstring). Used by
    :func:`decode_image` and by the LMDB tools, which store these exact pixels.

    Args:
        data (np.ndarray): (N,) uint8 encoded file.
        name (str): Named in errors.
        max_pixels (int | None): See :func:`check_pixels`.

    Returns:
        np.ndarray: (H, W) or (H, W, C) array in OpenCV's channel order (BGR, BGRA), of the file's dtype.

    Raises:
        ValueError: Empty, oversized or undecodable data.
    """
    if data.size == 0:
        raise ValueError(f'{name}: empty file.')
    check_pixels(data, name, max_pixels)
    # UNCHANGED keeps alpha but ignores EXIF orientation (except in TIFF): use it only where alpha may be present
    flags = cv2.IMREAD_UNCHANGED if _may_have_alpha(data) else cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR
    try:
        img = cv2.imdecode(data, flags)
    except cv2.error as err:
        raise ValueError(f'{name}: cannot decode image ({err}).') from err
    if img is None or img.size == 0:
        raise ValueError(f'{name}: cannot decode image (corrupt, truncated or not a supported format).')
    return img


def _is_cmyk_tiff(data):
    """TIFF with PhotometricInterpretation 5 (separated, CMYK), which OpenCV decodes as BGR + an opaque alpha."""
    if bytes(data[:4]) not in (b'II*\x00', b'MM\x00*', b'II+\x00', b'MM\x00+'):
        return False
    try:
        return _tiff_tags(bytes(data), (262, )).get(262) == 5
    except (struct.error, IndexError):
        return False


def decode_image(source, name=None, max_pixels=None, with_info=False):
    """Decode an image to float32 RGB in [0, 1]: the project's one image decoder.

    Args:
        source (str | os.PathLike | bytes | np.ndarray): Image file path, or the encoded file (bytes, or a (N,)
            uint8 array as read from an LMDB).
        name (str | None): Named in errors; default the path, or '<bytes>'.
        max_pixels (int | None): Largest accepted width x height, checked from the header before decoding; None
            means :data:`DEFAULT_MAX_PIXELS`.
        with_info (bool): Also return the :class:`ImageInfo` (bit depth, gray, alpha) needed to write the result
            back in the input's format.

    Returns:
        np.ndarray | tuple[np.ndarray, ImageInfo]: (H, W, 3) float32 RGB in [0, 1] (alpha dropped), and with
        ``with_info`` the image's properties.

    Raises:
        FileNotFoundError: If ``source`` is a path that does not exist.
        ValueError: If the image is empty, too large, cannot be decoded or has an unsupported layout.
    """
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        name = path if name is None else name
        if not os.path.isfile(path):
            raise FileNotFoundError(f'Image file not found: {path}')
        data = np.fromfile(path, dtype=np.uint8)
    else:
        name = '<bytes>' if name is None else name
        data = source if isinstance(source, np.ndarray) else np.frombuffer(source, np.uint8)
    img = decode_raw(data, name, max_pixels)
    img, bit_depth = _to_float(img, name)
    if img.ndim == 2:
        img = img[:, :, None]
    channels = img.shape[2]
    alpha = None
    if channels == 4 and _png_color_type(data) == 4:  # OpenCV expands gray + alpha PNGs to BGRA
        img, channels = img[:, :, [0, 3]], 2
    elif channels == 4 and _is_cmyk_tiff(data):
        img, channels = img[:, :, :3], 3
    if channels == 1:
        rgb, gray = np.repeat(img, 3, axis=2), True
    elif channels == 2:
        rgb, alpha, gray = np.repeat(img[:, :, :1], 3, axis=2), img[:, :, 1], True
    elif channels == 3:
        rgb, gray = img[:, :, ::-1], False
    elif channels == 4:
        rgb, alpha, gray = img[:, :, 2::-1], img[:, :, 3], False
    else:
        raise ValueError(f'{name}: unsupported number of channels {channels} (expected 1, 2, 3 or 4).')
    rgb = np.ascontiguousarray(rgb, dtype=np.float32)
    if not with_info:
        return rgb
    return rgb, ImageInfo(bit_depth=bit_depth, gray=gray, alpha=alpha, height=img.shape[0], width=img.shape[1])


def output_extension(in_ext, info, ext='auto', alpha='keep'):
    """Choose the output file extension.

    Args:
        in_ext (str): Input extension, e.g. '.jpg'.
        info (ImageInfo): From :func:`decode_image` (``with_info=True``).
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
