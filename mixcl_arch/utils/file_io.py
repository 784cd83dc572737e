"""Atomic file writes, the one implementation every writer in the project uses.

Each function writes to a temporary file ``.<name>.<random>.tmp`` in the destination folder, fsyncs it and
``os.replace``s it over the destination, so a crash or kill mid-write leaves any previous file intact and never a
half-written one. The writer holds an ``flock`` on its temporary file while writing; a temporary file nobody holds a
lock on is therefore an orphan of a killed writer, which :func:`remove_stale_temp_files` removes (POSIX ``fcntl``).
"""
import contextlib
import fcntl
import os
import re
import tempfile

import cv2


def _current_umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


_TEMP_NAME = re.compile(r'\..+\.[a-z0-9_]{8}\.tmp')  # mkstemp's 8 random characters


def _locked_temp_file(path, folder):
    """mkstemp a ``.<name>.<random>.tmp`` in ``folder`` and flock it; returns (fd, tmp path)."""
    while True:
        fd, tmp = tempfile.mkstemp(prefix='.' + os.path.basename(path) + '.', suffix='.tmp', dir=folder)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            if os.path.samestat(os.fstat(fd), os.stat(tmp)):
                return fd, tmp
        except FileNotFoundError:
            pass
        # a cleaner took it for an orphan between mkstemp and flock and removed it: make another one
        os.close(fd)


def remove_stale_temp_files(folder):
    """Remove the temporary files of interrupted atomic writes (:func:`atomic_open`) from ``folder``.

    A temporary file is removed only while this process holds its lock, i.e. when no live writer owns it, so this is
    safe while other processes write into ``folder``. Other files are never touched.

    Returns:
        list[str]: The removed paths (sorted); [] when ``folder`` does not exist.
    """
    if not os.path.isdir(folder):
        return []
    removed = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if not (_TEMP_NAME.fullmatch(entry.name) and entry.is_file(follow_symlinks=False)):
            continue
        try:
            fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:  # its writer finished meanwhile
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.remove(entry.path)
            removed.append(entry.path)
        except (BlockingIOError, FileNotFoundError):  # a live writer holds it / it was replaced meanwhile
            pass
        finally:
            os.close(fd)
    return removed


def try_lock_file(path):
    """Create/open ``path`` and take an exclusive ``flock`` on it without waiting.

    The lock lives as long as the returned file object stays open (and ends with the process, also on a crash).

    Returns:
        file | None: The open file holding the lock, or None when another process holds it.
    """
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    f = open(path, 'a+')
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        return None
    return f


@contextlib.contextmanager
def atomic_open(path):
    """Yield a binary file handle whose content replaces ``path`` only when the block succeeds."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = _locked_temp_file(path, folder)
    try:
        with os.fdopen(fd, 'wb') as f:  # closing releases the lock: only after the replace
            yield f
            f.flush()
            os.fsync(f.fileno())
            os.fchmod(f.fileno(), 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file the mode open() would have
            os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
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
