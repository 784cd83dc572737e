"""Atomic file writes, the one implementation every writer in the project uses.

Each function writes to a temporary file in the destination folder, fsyncs it and ``os.replace``s it over the
destination, so a crash or kill mid-write leaves any previous file intact and never a half-written one.
"""
import contextlib
import os
import tempfile

import cv2


def _current_umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


@contextlib.contextmanager
def atomic_open(path):
    """Yield a binary file handle whose content replaces ``path`` only when the block succeeds."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix='.' + os.path.basename(path) + '.', suffix='.tmp', dir=folder)
    try:
        with os.fdopen(fd, 'wb') as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file the mode open() would have
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write_bytes(data, path):
    """Write ``data`` (bytes) to ``path`` atomically; its folder is created when missing."""
    with atomic_open(path) as f:
        f.write(data)


def atomic_write_text(text, path):
    """Write a UTF-8 text file atomically."""
    atomic_write_bytes(text.encode('utf-8'), path)


def atomic_torch_save(obj, path):
    """``torch.save`` atomically: a kill while saving leaves the previous checkpoint loadable."""
    import torch
    with atomic_open(path) as f:
        torch.save(obj, f)


def atomic_imwrite(img, path, png_compression=1, jpg_quality=95):
    """Encode an image with OpenCV and write it atomically.

    Args:
        img (np.ndarray): (H, W) or (H, W, 3) uint8/uint16 image in **BGR** order (OpenCV convention).
        path (str): Destination; the extension selects the format.
        png_compression (int): PNG compression level 0-9.
        jpg_quality (int): JPEG quality.
    """
    ext = os.path.splitext(path)[1].lower() or '.png'
    params = []
    if ext == '.png':
        params = [cv2.IMWRITE_PNG_COMPRESSION, int(png_compression)]
    elif ext in ('.jpg', '.jpeg'):
        params = [cv2.IMWRITE_JPEG_QUALITY, int(jpg_quality)]
    ok, buf = cv2.imencode(ext, img, params)
    if not ok:
        raise ValueError(f'OpenCV could not encode an image of shape {img.shape} as {ext!r} for {path}')
    atomic_write_bytes(buf.tobytes(), path)
