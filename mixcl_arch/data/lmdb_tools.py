"""Image folders to BasicSR-format LMDB, without BasicSR's known pitfalls.

Layout of one database (what ``basicsr.utils.FileClient('lmdb', ...)`` reads)::

    NAME.lmdb/
        data.mdb
        lock.mdb
        meta_info.txt      one line per image: ``key (h,w,c) compress_level``

Differences from ``basicsr.utils.lmdb_util.make_lmdb_from_imgs``:

* the key is the image's :func:`~mixcl_arch.utils.image_io.image_key`, its path relative to the folder without its
  extension (``sub/0001_0.8_0.2``): dotted stems survive and equal names in different subfolders do not collide;
  two files that map to one key are an error, and so is a space in a key;
* images are read as every reader of the project reads them (:func:`~mixcl_arch.utils.image_io.decode_raw`: pixel
  count checked from the header first, EXIF orientation applied), so a database holds the pixels the folder gives;
* the map size is computed from the data (decoded size bound, page-rounded, with margin) and grown on MapFullError;
* keys must be ASCII because FileClient encodes them with ``.encode('ascii')``: non-ASCII names raise a clear error
  listing them, or, with ``non_ascii='quote'``, are percent-encoded (see :func:`mixcl_arch.utils.image_io.image_key`);
* the database is written to ``NAME.lmdb.tmp`` and renamed when complete and verified, so an interrupted run never
  leaves a half-written database under the final name;
* everything is read back and compared to the source pixels (``verify=True``), with a progress bar.

Every database the project reads is opened through :func:`open_lmdb` (or its process-wide cache :func:`lmdb_env`),
which checks ``data.mdb`` before anything touches its memory map: a zero-byte file, or one shorter than the pages
the database says it uses (a copy cut short), raises an error naming the file. Unchecked, the first read past the
end of the file kills the process with SIGBUS (DataLoader workers report it as "out of shared memory").

Readers should parse ``meta_info.txt`` with :func:`read_meta_info` (``line.rsplit(' ', 2)``), not with BasicSR's
``line.split('.')[0]`` which truncates dotted keys.
"""
import os
import os.path as osp
import shutil

import cv2
import lmdb
import numpy as np
from tqdm import tqdm

from mixcl_arch.utils.image_io import decode_raw, image_key, scan_images

__all__ = ['keyed_images', 'make_lmdb_from_folder', 'read_meta_info', 'verify_lmdb', 'open_lmdb', 'lmdb_env']

_PAGE = 4096


def keyed_images(folder, non_ascii='error'):
    """Images under ``folder`` (recursive, :func:`~mixcl_arch.utils.image_io.scan_images`) and their LMDB keys.

    Args:
        folder (str): Image folder.
        non_ascii (str): 'error' or 'quote', see :func:`~mixcl_arch.utils.image_io.image_key`.

    Returns:
        list[tuple[str, str]]: Sorted ``(relative_path, key)`` pairs.

    Raises:
        FileNotFoundError: ``folder`` is missing. ValueError: no images, two files with one key, or bad names.
    """
    errors, seen, out = [], {}, []
    for rel in scan_images(folder):
        try:
            key = image_key(rel, non_ascii)
        except ValueError as err:
            errors.append(str(err))
            continue
        if ' ' in key:
            errors.append(f'{rel}: spaces are not allowed in LMDB keys (meta_info.txt is space separated)')
            continue
        if key in seen:
            errors.append(f'{seen[key]} and {rel} map to the same key {key!r}')
        seen[key] = rel
        out.append((rel, key))
    if errors:
        raise ValueError(f'{folder}: {len(errors)} problem(s):\n  ' + '\n  '.join(errors[:20]))
    return out


def _read_raw(path):
    return decode_raw(np.fromfile(path, dtype=np.uint8), path)


def _estimate_map_size(folder, items):
    """Upper bound of the database size from the images' decoded sizes (header read only, via PIL)."""
    from PIL import Image
    total = 0
    for rel, key in items:
        path = osp.join(folder, rel)
        try:
            with Image.open(path) as im:
                w, h = im.size
                bands = len(im.getbands())
                bytes_per = 2 if im.mode.startswith('I;16') or im.mode == 'I' else 1
        except Exception:  # PIL cannot parse every OpenCV format: fall back to decoding
            img = _read_raw(path)
            h, w = img.shape[:2]
            bands = 1 if img.ndim == 2 else img.shape[2]
            bytes_per = img.dtype.itemsize
        raw = h * w * bands * bytes_per
        # PNG of incompressible data is raw + ~0.1% + headers; values live in page-rounded overflow pages
        total += ((int(raw * 1.01) + 1024) // _PAGE + 1) * _PAGE + len(key) + 64
    return int(total * 1.5) + 64 * 1024 * 1024


def read_meta_info(lmdb_path):
    """Parse ``meta_info.txt`` of a database.

    Args:
        lmdb_path (str): The ``.lmdb`` folder.

    Returns:
        list[tuple[str, tuple[int, int, int], int]]: ``(key, (h, w, c), compress_level)`` per line.
    """
    path = osp.join(lmdb_path, 'meta_info.txt')
    if not osp.isfile(path):
        raise FileNotFoundError(f'meta_info.txt not found in {lmdb_path}')
    out = []
    with open(path, encoding='ascii') as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip('\n')
            if not line:
                continue
            parts = line.rsplit(' ', 2)
            if len(parts) != 3 or not (parts[1].startswith('(') and parts[1].endswith(')')):
                raise ValueError(f'{path}:{n}: malformed line {line!r} (expected "key (h,w,c) level")')
            shape = tuple(int(v) for v in parts[1][1:-1].split(','))
            out.append((parts[0], shape, int(parts[2])))
    return out


def open_lmdb(lmdb_path):
    """Open a database read-only after checking that ``data.mdb`` is whole; the project's only way to open one.

    Checks, in this order: ``data.mdb`` exists and is not empty; LMDB accepts its header; the file holds every page
    the database uses (``(info()['last_pgno'] + 1) * stat()['psize']`` bytes); the first record reads back.

    Args:
        lmdb_path (str): The ``.lmdb`` folder.

    Returns:
        lmdb.Environment: Read-only, lock-free environment (as BasicSR's ``FileClient('lmdb')``); the caller closes it.

    Raises:
        FileNotFoundError: No ``data.mdb`` in ``lmdb_path``.
        ValueError: A zero-byte, truncated, unreadable or empty ``data.mdb``; the message names the file.
    """
    data = osp.join(lmdb_path, 'data.mdb')
    if not osp.isfile(data):
        raise FileNotFoundError(f'{data} not found: {lmdb_path} is not an LMDB (make one with scripts/create_lmdb.py)')
    size = osp.getsize(data)
    rebuild = 'copy it again or rebuild it with scripts/create_lmdb.py'
    if size == 0:
        raise ValueError(f'{data} is empty (0 bytes): {rebuild}')
    try:
        env = lmdb.open(lmdb_path, readonly=True, lock=False, readahead=False, meminit=False, subdir=True)
    except lmdb.Error as err:
        raise ValueError(f'{data} cannot be opened as an LMDB ({err}): {rebuild}') from err
    try:
        # only the two header pages have been read so far; every other page is reached through the memory map,
        # where a page beyond the end of the file is a SIGBUS, not an exception
        psize, pages = env.stat()['psize'], env.info()['last_pgno'] + 1
        if size < pages * psize:
            raise ValueError(f'{data} is truncated: {size} bytes, but the database uses {pages} pages of {psize} '
                             f'bytes ({pages * psize} bytes): {rebuild}')
        with env.begin(write=False) as txn:
            cursor = txn.cursor()
            # copying the first value reads the tree down to its (overflow) pages; a stored image is never empty
            if not cursor.first() or not cursor.value():
                raise ValueError(f'{data} holds no records, or an empty first value: {rebuild}')
    except lmdb.Error as err:
        env.close()
        raise ValueError(f'{data} is corrupt ({err}): {rebuild}') from err
    except ValueError:
        env.close()
        raise
    return env


_SHARED_ENVS = {}


def lmdb_env(lmdb_path):
    """Process-wide read-only environment of a database, opened (and checked) by :func:`open_lmdb` on first use.

    py-lmdb refuses a second environment on one path in a process (BasicSR's FileClient then fails when two datasets
    share a database), so all readers share this one; forked DataLoader workers inherit it.

    Args:
        lmdb_path (str): The ``.lmdb`` folder.

    Returns:
        lmdb.Environment: Shared environment; do not close it.
    """
    key = osp.realpath(lmdb_path)
    if key not in _SHARED_ENVS:
        _SHARED_ENVS[key] = open_lmdb(lmdb_path)
    return _SHARED_ENVS[key]


def verify_lmdb(lmdb_path, folder=None, items=None, progress=True):
    """Read every key listed in meta_info.txt back, decode it and check its shape (and pixels against ``folder``).

    Args:
        lmdb_path (str): The ``.lmdb`` folder.
        folder (str | None): Source folder; when given with ``items`` the decoded pixels must equal the source.
        items (list[tuple[str, str]] | None): ``(relative_path, key)`` pairs from :func:`keyed_images`.
        progress (bool): Show a tqdm progress bar.

    Returns:
        int: Number of verified images.

    Raises:
        ValueError: A key is missing, undecodable, of the wrong shape or different from its source.
    """
    meta = read_meta_info(lmdb_path)
    src = dict((k, r) for r, k in items) if items is not None else {}
    # py-lmdb refuses a second environment on a path this process has open: reuse the shared one if there is one
    shared = _SHARED_ENVS.get(osp.realpath(lmdb_path))
    env = shared or open_lmdb(lmdb_path)
    try:
        with env.begin(write=False) as txn:
            n_entries = txn.stat()['entries']
            if n_entries != len(meta):
                raise ValueError(f'{lmdb_path}: {n_entries} entries but meta_info.txt lists {len(meta)}')
            for key, shape, _ in tqdm(meta, desc=f'verify {osp.basename(lmdb_path)}', disable=not progress):
                buf = txn.get(key.encode('ascii'))
                if buf is None:
                    raise ValueError(f'{lmdb_path}: key {key!r} from meta_info.txt is missing')
                try:
                    img = decode_raw(np.frombuffer(buf, np.uint8), f'{lmdb_path} key {key!r}')
                except ValueError as err:
                    raise ValueError(f'{lmdb_path}: value of key {key!r} does not decode ({err})') from err
                got = img.shape if img.ndim == 3 else img.shape + (1, )
                if tuple(got) != tuple(shape):
                    raise ValueError(f'{lmdb_path}: key {key!r} decodes to {got}, meta_info says {shape}')
                if folder is not None and key in src:
                    ref = _read_raw(osp.join(folder, src[key]))
                    if ref.shape != img.shape or not np.array_equal(ref, img):
                        raise ValueError(f'{lmdb_path}: key {key!r} differs from its source {src[key]}')
    finally:
        if env is not shared:
            env.close()
    return len(meta)


def make_lmdb_from_folder(folder,
                          lmdb_path,
                          compress_level=1,
                          non_ascii='error',
                          batch=500,
                          verify=True,
                          overwrite=False,
                          progress=True):
    """Write every image of ``folder`` into a BasicSR-format LMDB at ``lmdb_path``.

    Args:
        folder (str): Image folder (recursive).
        lmdb_path (str): Destination, must end with ``.lmdb``.
        compress_level (int): PNG compression level 0-9 of the stored values (BasicSR default 1).
        non_ascii (str): 'error' or 'quote', see :func:`keyed_images`.
        batch (int): Images per write transaction.
        verify (bool): Read everything back and compare with the sources before publishing.
        overwrite (bool): Replace an existing database at ``lmdb_path``.
        progress (bool): Show tqdm progress bars.

    Returns:
        dict: ``{'lmdb': path, 'images': n, 'map_size': bytes, 'data_bytes': size of data.mdb}``.
    """
    if not lmdb_path.endswith('.lmdb'):
        raise ValueError(f'LMDB path must end with .lmdb, got {lmdb_path}')
    if osp.exists(lmdb_path) and not overwrite:
        raise FileExistsError(f'{lmdb_path} exists: pass overwrite=True (--overwrite) to replace it')
    items = keyed_images(folder, non_ascii)
    tmp_path = lmdb_path.rstrip('/') + '.tmp'
    if osp.exists(tmp_path):
        shutil.rmtree(tmp_path)
    os.makedirs(tmp_path)
    map_size = _estimate_map_size(folder, items)
    env = lmdb.open(tmp_path, map_size=map_size, subdir=True)
    meta_lines = []
    try:
        bar = tqdm(total=len(items), desc=f'write {osp.basename(lmdb_path)}', disable=not progress)
        for start in range(0, len(items), batch):
            chunk = []
            for rel, key in items[start:start + batch]:
                img = _read_raw(osp.join(folder, rel))
                ok, buf = cv2.imencode('.png', img, [cv2.IMWRITE_PNG_COMPRESSION, int(compress_level)])
                if not ok:
                    raise ValueError(f'Cannot PNG-encode {osp.join(folder, rel)} (shape {img.shape})')
                c = 1 if img.ndim == 2 else img.shape[2]
                chunk.append((key, buf.tobytes(), f'{key} ({img.shape[0]},{img.shape[1]},{c}) {compress_level}'))
            while True:
                try:
                    with env.begin(write=True) as txn:
                        for key, value, _ in chunk:
                            txn.put(key.encode('ascii'), value)
                    break
                except lmdb.MapFullError:
                    # the estimate is an upper bound for normal images; grow instead of failing anyway
                    map_size *= 2
                    env.set_mapsize(map_size)
            meta_lines += [line for _, _, line in chunk]
            bar.update(len(chunk))
        bar.close()
    finally:
        env.close()
    with open(osp.join(tmp_path, 'meta_info.txt'), 'w', encoding='ascii') as f:
        f.write('\n'.join(meta_lines) + '\n')
        f.flush()
        os.fsync(f.fileno())
    if verify:
        verify_lmdb(tmp_path, folder, items, progress=progress)
    if osp.exists(lmdb_path):
        shutil.rmtree(lmdb_path)
    os.replace(tmp_path, lmdb_path)
    return {
        'lmdb': lmdb_path,
        'images': len(items),
        'map_size': map_size,
        'data_bytes': osp.getsize(osp.join(lmdb_path, 'data.mdb'))
    }
