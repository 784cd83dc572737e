"""Helpers of :class:`~mixcl_arch.data.clip_paired_image_dataset.CLIPPairedImageDataset` and
``scripts/extract_clip_features.py``: image listing, hazy -> GT name rules, cheap header checks, decoding, pair CSV."""
import csv
import os
import re
import struct
import zlib

import cv2
import numpy as np

from mixcl_arch.utils.image_io import check_pixels

__all__ = ['IMG_EXTENSIONS', 'GT_NAME_RULES', 'index_unique', 'scan_images', 'GTNameMapper', 'image_size', 'tail_ok',
           'decode_image', 'read_pair_csv', 'first', 'standin_text_feature', 'random_crop_pair', 'augment_pair']

IMG_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp', '.ppm', '.pgm')
# stem up to the first underscore: ITS 1_1_0.90179 -> 1, OTS / SOTS 0025_0.8_0.1 -> 0025
_FIRST_TOKEN = (r'^([^_]+)_.*$', r'\1')
# scripts/make_haze_pairs.py names: <stem>_<version>_<A>_<beta>, where <stem> may itself contain underscores
_HAZE_PAIRS = (r'^(.*)_\d+_\d+\.\d+_\d+\.\d+$', r'\1')
GT_NAME_RULES = {'identity': None, 'reside_its': _FIRST_TOKEN, 'reside_ots': _FIRST_TOKEN, 'reside': _FIRST_TOKEN,
                 'first_underscore': _FIRST_TOKEN, 'haze_pairs': _HAZE_PAIRS}


def first(items, n=5):
    """``'a, b, c, ... (+N more)'`` for error messages."""
    items = [str(i) for i in items]
    more = f', ... (+{len(items) - n} more)' if len(items) > n else ''
    return ', '.join(items[:n]) + more


def index_unique(items, where):
    """{key: name} from (key, name) pairs; names that share a key (``a.png`` and ``a.jpg``) raise ValueError, since
    their pairs and CLIP features could not be told apart."""
    index, clashes = {}, []
    for key, name in items:
        if key in index:
            clashes.append(f'{index[key]} / {name}')
        else:
            index[key] = name
    if clashes:
        raise ValueError(f'{where}: {len(clashes)} name(s) differ only by extension, so their pairs and CLIP '
                         f'features cannot be told apart: {first(clashes)}. Rename or remove one of each.')
    return index


def scan_images(folder):
    """Image files under ``folder`` (recursive, hidden files skipped) as sorted '/'-separated relative paths.

    Raises:
        FileNotFoundError: Missing folder.
        ValueError: No images.
    """
    if not os.path.isdir(folder):
        raise FileNotFoundError(f'Image folder not found: {folder}')
    out = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith('.'))
        rel_dir = os.path.relpath(dirpath, folder)
        for name in filenames:
            if name.lower().endswith(IMG_EXTENSIONS) and not name.startswith('.'):
                out.append(name if rel_dir == '.' else f"{rel_dir.replace(os.sep, '/')}/{name}")
    if not out:
        raise ValueError(f'No images in {folder} (extensions: {", ".join(IMG_EXTENSIONS)}).')
    return sorted(out)


def strip_ext(rel):
    stem, ext = os.path.splitext(rel)
    return stem if ext.lower() in IMG_EXTENSIONS else rel


class GTNameMapper:
    """Maps a hazy image key (relative path without extension) to candidate GT keys.

    Args:
        rule (str): 'identity' (same name), 'reside_its' / 'reside_ots' / 'reside' / 'first_underscore' (stem up to
            the first underscore), 'haze_pairs' (make_haze_pairs.py names ``<stem>_<k>_<A>_<beta>``, underscores
            in the stem kept); ignored when ``regex`` is given.
        regex (str | None): Pattern applied (``re.sub``, once, full stem) to the hazy stem.
        repl (str | None): Replacement for ``regex`` (default ``\\1``).

    The mapped stem is looked up first in the hazy image's own sub-folder, then at the GT root (OTS keeps hazy
    images in part1/, part2/, ... and all GT images in one folder). Extensions never have to match.
    """

    def __init__(self, rule='identity', regex=None, repl=None):
        if regex is None:
            if rule not in GT_NAME_RULES:
                raise ValueError(f'gt_name_rule must be one of {sorted(GT_NAME_RULES)}, got {rule!r}.')
            spec = GT_NAME_RULES[rule]
            regex, repl = (spec if spec else (None, None))
        try:
            self.pattern = re.compile(regex) if regex else None
        except re.error as err:
            raise ValueError(f'gt_name_regex {regex!r} is not a valid regular expression: {err}') from err
        self.repl = r'\1' if repl is None else repl

    def __call__(self, key):
        sub, _, stem = key.rpartition('/')
        if self.pattern is not None:
            stem = self.pattern.sub(self.repl, stem, count=1)
        cands = [f'{sub}/{stem}' if sub else stem]
        if sub:
            cands.append(stem)
        return cands


def image_size(path):
    """(h, w) of an image from its header (PIL, lazy) or None when unreadable."""
    from PIL import Image
    try:
        with Image.open(path) as im:
            w, h = im.size
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


def decode_image(buf, name='<bytes>', max_pixels=None):
    """Decode image bytes to float32 RGB (H, W, 3) in [0, 1] (8/16-bit, gray and alpha handled).

    Args:
        buf (bytes | np.ndarray): Encoded image.
        name (str): Named in errors.
        max_pixels (int | None): Largest accepted width x height, checked from the header before decoding (None:
            ``MIXCL_MAX_PIXELS`` or 200 MP, see :func:`mixcl_arch.utils.image_io.check_pixels`).

    Raises:
        ValueError: Undecodable or oversized data (names the image).
    """
    arr = np.frombuffer(buf, np.uint8) if not isinstance(buf, np.ndarray) else buf
    if not arr.size:
        raise ValueError(f'Cannot decode image {name} (empty file).')
    check_pixels(arr, name, max_pixels)
    img = cv2.imdecode(arr, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ValueError(f'Cannot decode image {name} (unreadable or truncated file).')
    scale = 65535.0 if img.dtype == np.uint16 else (1.0 if img.dtype.kind == 'f' else 255.0)
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    elif img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    else:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    return img.astype(np.float32) / np.float32(scale)


def read_pair_csv(path, need_domain=False, domain_column='domain'):
    """Rows of a pair meta CSV (``hazy,gt[,domain,...]``).

    Raises:
        FileNotFoundError / ValueError: Missing file, missing columns, empty file, empty cells.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f'Pair meta file not found: {path}')
    with open(path, newline='', encoding='utf-8-sig') as f:  # -sig: spreadsheet programs write a UTF-8 BOM
        reader = csv.DictReader(f)
        cols = reader.fieldnames or []
        need = ['hazy', 'gt'] + ([domain_column] if need_domain else [])
        missing = [c for c in need if c not in cols]
        if missing:
            raise ValueError(f'{path}: missing column(s) {missing} (has {cols}); expected the header '
                             'hazy,gt,domain,beta,A,depth_source written by scripts/make_haze_pairs.py.')
        rows = list(reader)
    if not rows:
        raise ValueError(f'{path}: no pairs listed.')
    bad = [i + 2 for i, r in enumerate(rows) if not r.get('hazy') or not r.get('gt')
           or (need_domain and not r.get(domain_column))]
    if bad:
        raise ValueError(f'{path}: empty cells on line(s) {first(bad)}.')
    return rows


def standin_text_feature(domain, dim=512):
    """Deterministic stand-in for a domain's text feature when no feature store is given (oracle conditioning).

    A unit vector drawn from N(0, I) with a generator seeded by ``crc32(domain)``: the same on every machine and run,
    different per domain, but NOT a CLIP feature.
    """
    import torch
    g = torch.Generator().manual_seed(zlib.crc32(str(domain).encode('utf-8')))
    v = torch.randn(int(dim), generator=g)
    return v / v.norm()


def random_crop_pair(lq, gt, size, edge_decay=0.0, rng=None, return_offsets=False):
    """Paired random crop of ``size`` x ``size`` (DehazeFormer's edge re-weighting when ``edge_decay`` > 0: with
    probability ``size / H * edge_decay`` the crop touches the top or bottom border, likewise for columns); with
    ``return_offsets`` the crop's (top, left) follows the two crops (to cut maps stored at other resolutions)."""
    import random
    rng = rng or random
    h, w = lq.shape[:2]

    def start(length):
        if edge_decay > 0 and rng.random() < size / length * edge_decay:
            return 0 if rng.randint(0, 1) == 0 else length - size
        return rng.randint(0, length - size)

    y, x = start(h), start(w)
    crops = lq[y:y + size, x:x + size], (None if gt is None else gt[y:y + size, x:x + size])
    return (*crops, (y, x)) if return_offsets else crops


def augment_pair(imgs, hflip=True, vflip=False, rot=False, rng=None):
    """Same random horizontal / vertical flip and 90-degree rotation for every (H, W, C) array in ``imgs``."""
    import random
    rng = rng or random
    do_h = hflip and rng.random() < 0.5
    do_v = vflip and rng.random() < 0.5
    k = rng.randint(0, 3) if rot else 0
    out = []
    for img in imgs:
        if img is not None:
            if do_h:
                img = img[:, ::-1]
            if do_v:
                img = img[::-1]
            if k:
                img = np.rot90(img, k, (0, 1))
        out.append(img)
    return out
