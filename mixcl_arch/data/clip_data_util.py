"""Helpers of :class:`~mixcl_arch.data.clip_paired_image_dataset.CLIPPairedImageDataset` and
``scripts/extract_clip_features.py``: hazy -> GT name rules, key clashes, the pair CSV, crops and augmentation.

Images are listed, keyed and decoded by :mod:`mixcl_arch.utils.image_io`."""
import csv
import os
import re
import zlib

import numpy as np

from mixcl_arch.data.haze_synthesis import HAZE_NAME_REGEX

__all__ = ['GT_NAME_RULES', 'index_unique', 'GTNameMapper', 'read_pair_csv', 'first', 'standin_text_feature',
           'random_crop_pair', 'augment_pair']

# stem up to the first underscore: ITS 1_1_0.90179 -> 1, OTS / SOTS 0025_0.8_0.1 -> 0025
_FIRST_TOKEN = (r'^([^_]+)_.*$', r'\1')
GT_NAME_RULES = {'identity': None, 'reside_its': _FIRST_TOKEN, 'reside_ots': _FIRST_TOKEN, 'reside': _FIRST_TOKEN,
                 'first_underscore': _FIRST_TOKEN, 'haze_pairs': (HAZE_NAME_REGEX, r'\1')}


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


def random_crop_pair(lq, gt, size, edge_decay=0.0, rng=None):
    """Paired random crop of ``size`` x ``size`` from (H, W, C) arrays.

    DehazeFormer's edge re-weighting when ``edge_decay`` > 0: with probability ``size / H * edge_decay`` the crop
    touches the top or bottom border, likewise for columns.

    Args:
        lq (np.ndarray): (H, W, C) image.
        gt (np.ndarray | None): (H, W, C) image of the same size, or None.
        size (int): Crop side.
        edge_decay (float): Border re-weighting (0: uniform offsets).
        rng (random.Random | None): Random source (default: the ``random`` module).

    Returns:
        tuple: (lq crop, gt crop or None, (top, left)): the offset, so that data stored at other resolutions can
        follow the crop.
    """
    import random
    rng = rng or random
    h, w = lq.shape[:2]

    def start(length):
        if edge_decay > 0 and rng.random() < size / length * edge_decay:
            return 0 if rng.randint(0, 1) == 0 else length - size
        return rng.randint(0, length - size)

    y, x = start(h), start(w)
    return lq[y:y + size, x:x + size], (None if gt is None else gt[y:y + size, x:x + size]), (y, x)


def augment_pair(imgs, hflip=True, vflip=False, rot=False, rng=None):
    """Same random horizontal flip, vertical flip and rotation by k quarter turns, in that order, for every array.

    Args:
        imgs (list[np.ndarray | None]): (H, W, C) arrays (None entries are passed through).
        hflip, vflip, rot (bool): Which transforms may be drawn (each flip with probability 0.5, k uniform in 0..3).
        rng (random.Random | None): Random source (default: the ``random`` module).

    Returns:
        tuple: (list of the transformed arrays, (hflip done, vflip done, k)); the rotation is
        ``np.rot90(img, k, (0, 1))``. The flags tell what was done, e.g. for the dataset's crop record.
    """
    import random
    rng = rng or random
    do_h = bool(hflip and rng.random() < 0.5)
    do_v = bool(vflip and rng.random() < 0.5)
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
    return out, (do_h, do_v, k)
