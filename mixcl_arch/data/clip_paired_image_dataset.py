"""Paired hazy / clear dataset (``CLIPPairedImageDataset``): images plus what a conditioner needs to know of them."""
import os
import os.path as osp
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from basicsr.utils import FileClient
from basicsr.utils.registry import DATASET_REGISTRY
from torch.utils import data

from mixcl_arch.clip.store import FeatureStore
from mixcl_arch.conditioning.config import check_moved_keys
from mixcl_arch.data.lmdb_tools import lmdb_env, read_meta_info
from mixcl_arch.utils.image_io import decode_image, image_key, image_size, scan_images, tail_ok

from .clip_data_util import GTNameMapper, augment_pair, first, index_unique, random_crop_pair, read_pair_csv


@DATASET_REGISTRY.register()
class CLIPPairedImageDataset(data.Dataset):
    """Hazy (lq) / clear (gt) pairs, after ``basicsr/data/paired_image_dataset.py``; serves data only.

    Everything that can be checked is checked at construction (missing GT, size mismatches, unreadable or truncated
    images, empty domain labels, images missing from the feature store), with errors naming the files, or the counts
    and the first few names. The dataset takes no conditioning options: the run's top-level ``conditioning:``,
    ``clip:`` and ``cliphaze_cond:`` sections configure the one conditioner of the model
    (:mod:`mixcl_arch.conditioning`, docs/clip.md), which reads the records below. An old conditioning key here
    (``cond_source``, ``cond_mode``, ``cond_extra``, ``cond_dim``, ``cond_density``, ``cond_embedding``,
    ``cliphaze_cond``, ``clip``, ``oracle_domains``) raises an OptionError naming its new place.

    Pair sources (first match wins):

    * ``meta_file``: pair CSV ``hazy,gt,domain,...`` (scripts/make_haze_pairs.py), paths relative to
      ``dataroot_lq`` / ``dataroot_gt`` (LMDB: the keys are these paths without extension);
    * ``meta_info_file``: BasicSR list, first token of each line is an lq name (looked up like a scanned name);
    * otherwise every image under ``dataroot_lq`` (disk: recursive scan; LMDB: its ``meta_info.txt``), its GT found
      by ``gt_name_rule`` / ``gt_name_regex`` by stem (the GT extension may differ).

    Item keys (the same keys and types for every item of a dataset, so that the default collate works):

    * 'lq', 'gt' (3, H, W) float32 RGB in [0, 1]; 'lq_path', 'gt_path' (str). No 'gt' / 'gt_path' without
      ``dataroot_gt``.
    * 'key' (str): the image's feature-store key (path relative to ``dataroot_lq`` without extension).
    * 'crop' (7,) int64: top, left, height, width, hflip, vflip, k: the crop in original lq pixels (train
      ``gt_size`` random crop, test ``center_crop``, else the full image 0, 0, H, W), then the horizontal flip,
      the vertical flip and ``np.rot90(img, k, (0, 1))``, applied in that order. Stored maps follow the image with
      :func:`mixcl_arch.conditioning.kinds.apply_crop`.
    * 'feature_store' (str): ``feature_store``, only when set.
    * 'domain' (str): the image's label in the ``meta_file`` column ``domain_column``, only when it has that column.

    Args:
        opt (dict): Options:

            - dataroot_lq (str): hazy folder, or ``.lmdb`` folder with io_backend lmdb. Required.
            - dataroot_gt (str | None): clear folder / ``.lmdb``. Required for phase 'train'; without it items have
              no 'gt' / 'gt_path'.
            - io_backend (dict): ``{type: disk}`` (default, BasicSR FileClient) or ``{type: lmdb}`` (opened and
              checked at construction by ``mixcl_arch.data.lmdb_tools.lmdb_env``: one read-only environment per
              database and process, shared by all datasets and forked workers).
            - phase (str): 'train' (random crops + augmentation) or anything else (test: full image or centre crop).
              BasicSR sets it from the datasets key.
            - meta_file (str | None): Pair CSV (see above); its domain column gives the items' 'domain' (what
              ``conditioning.source: oracle`` reads).
            - domain_column (str, default 'domain'): CSV column of the domain labels. When the CSV has it, every
              listed pair needs a non-empty label; a column set here must exist.
            - meta_info_file (str | None): BasicSR meta info list.
            - feature_store (str | None): Feature store of these images (scripts/extract_clip_features.py): data,
              like ``dataroot_lq``. Loaded at construction to check that every image has a row; items name it.
            - gt_name_rule (str): 'identity' (default, DehazeFormer layout), 'reside_its', 'reside_ots', 'reside',
              'haze_pairs' (scripts/make_haze_pairs.py names ``<stem>_<k>_<A>_<beta>``) or 'first_underscore'
              (stem up to the first underscore: ``1_1_0.90179.png`` -> ``1.*``,
              ``0025_0.8_0.1.jpg`` -> ``0025.*``).
            - gt_name_regex (str | None), gt_name_repl (str, default ``\\1``): custom hazy-stem -> GT-stem rule
              (``re.sub``), overrides gt_name_rule.
            - gt_size (int | None): Train crop size (square). None: full images.
            - use_hflip (bool, default True), use_vflip (bool, default False), use_rot (bool, default False):
              train augmentation (rot = random multiple of 90 degrees).
            - edge_decay (float, default 0): DehazeFormer's border re-weighting of crop positions (train).
            - center_crop (int | None): Test mode: centre crop of this size instead of the full image.
            - crop_gt_to_lq (bool, default False): GT larger than its hazy image (original SOTS-indoor: 640x480 GT
              for 620x460 hazy) is centre-cropped to the hazy size instead of raising.
            - check_images (bool | str, default True): True: read every header (sizes) and check PNG / JPEG end
              markers; 'full': also decode every image once (threads); False: no image checks.
            - check_workers (int, default 4): threads for ``check_images: full``.
    """

    def __init__(self, opt):
        super().__init__()
        # conditioning options live in the run's top-level sections now (mixcl_arch.conditioning.config)
        check_moved_keys({'datasets': {opt.get('phase', 'train'): opt}})
        self.opt = opt
        self.io_backend_opt = dict(opt.get('io_backend') or {'type': 'disk'})
        self.backend = self.io_backend_opt.get('type', 'disk')
        if self.backend not in ('disk', 'lmdb'):
            raise ValueError(f"io_backend.type must be 'disk' or 'lmdb', got {self.backend!r}.")
        self.file_client = None
        self.phase = opt.get('phase', 'train')
        self.train = self.phase == 'train'
        self.lq_folder = opt.get('dataroot_lq')
        self.gt_folder = opt.get('dataroot_gt')
        if not self.lq_folder:
            raise ValueError('CLIPPairedImageDataset needs dataroot_lq.')
        if self.train and not self.gt_folder:
            raise ValueError('CLIPPairedImageDataset in phase train needs dataroot_gt.')
        for folder in (self.lq_folder, self.gt_folder):
            if folder and not osp.isdir(folder):
                raise FileNotFoundError(f'Dataset folder not found: {folder}')
        self.gt_size = opt.get('gt_size')
        self.center_crop = opt.get('center_crop')
        self.edge_decay = float(opt.get('edge_decay', 0) or 0)
        self.crop_gt_to_lq = bool(opt.get('crop_gt_to_lq', False))
        self.feature_store = opt.get('feature_store')

        self._build_pairs()
        self._check_sizes()
        if self.feature_store:
            self._check_store()

    # ------------------------------------------------------------------------------------------------- pairs
    def _lmdb_keys(self, folder):
        if not osp.isfile(osp.join(folder, 'meta_info.txt')):
            raise FileNotFoundError(f'{folder}: not a BasicSR LMDB (no meta_info.txt).')
        lmdb_env(folder)  # a zero-byte or truncated data.mdb fails here, not with SIGBUS at the first read
        # BasicSR's own writer lists 'key.png' while the stored key has no extension
        return {image_key(key): (shape[0], shape[1]) for key, shape, _ in read_meta_info(folder)}

    @staticmethod
    def _csv_lmdb_key(rel):
        """LMDB key of a CSV path: scripts/create_lmdb.py's rule (percent-encoded when the name is non-ASCII)."""
        return image_key(rel, non_ascii='quote')

    def _build_pairs(self):
        opt = self.opt
        mapper = GTNameMapper(opt.get('gt_name_rule', 'identity'), opt.get('gt_name_regex'), opt.get('gt_name_repl'))
        lmdb = self.backend == 'lmdb'
        # key -> stored name (disk: relative path with extension; lmdb: key), and the shapes known for free
        if lmdb:
            self.lq_shapes = self._lmdb_keys(self.lq_folder)
            lq_index = {k: k for k in self.lq_shapes}
            self.gt_shapes = self._lmdb_keys(self.gt_folder) if self.gt_folder else {}
            gt_index = {k: k for k in self.gt_shapes}
        else:
            self.lq_shapes, self.gt_shapes = {}, {}
            lq_files = scan_images(self.lq_folder, followlinks=True) if not opt.get('meta_file') else None
            lq_index = None if lq_files is None else index_unique([(image_key(r), r) for r in lq_files],
                                                                  self.lq_folder)
            gt_index = {}
            if self.gt_folder:
                gt_index = index_unique([(image_key(r), r) for r in scan_images(self.gt_folder, followlinks=True)],
                                        self.gt_folder)
        self.domains = None
        pairs, missing = [], []
        if opt.get('meta_file'):
            domain_column = opt.get('domain_column') or 'domain'
            # a column named in the options must be there; the default one is optional
            rows = read_pair_csv(opt['meta_file'], need_domain=bool(opt.get('domain_column')),
                                 domain_column=domain_column)
            has_domain = domain_column in rows[0]
            if has_domain:
                empty = [i + 2 for i, row in enumerate(rows) if not (row[domain_column] or '').strip()]
                if empty:
                    raise ValueError(f"{opt['meta_file']}: empty {domain_column!r} label on line(s) {first(empty)}.")
            labels = []
            for row in rows:
                lq_name, gt_name = (self._csv_lmdb_key(row[k]) if lmdb else row[k].replace(os.sep, '/')
                                    for k in ('hazy', 'gt'))
                lq_ok = lq_name in self.lq_shapes if lmdb else osp.isfile(osp.join(self.lq_folder, lq_name))
                gt_ok = (not self.gt_folder) or (gt_name in self.gt_shapes if lmdb else
                                                 osp.isfile(osp.join(self.gt_folder, gt_name)))
                if not lq_ok or not gt_ok:
                    missing.append(f"{row['hazy']}->{row['gt']} ({'hazy' if not lq_ok else 'GT'} missing)")
                    continue
                pairs.append((lq_name, gt_name if self.gt_folder else None))
                labels.append(row[domain_column].strip() if has_domain else None)
            if missing:
                raise ValueError(f"{opt['meta_file']}: {len(missing)} listed pair(s) not found under "
                                 f'{self.lq_folder} / {self.gt_folder}: {first(missing)}')
            self.domains = labels if has_domain else None
        else:
            if opt.get('meta_info_file'):
                if not osp.isfile(opt['meta_info_file']):
                    raise FileNotFoundError(f"meta_info_file not found: {opt['meta_info_file']}")
                with open(opt['meta_info_file']) as f:
                    names = [line.split(' ')[0].strip() for line in f if line.strip()]
                keys = [image_key(n) for n in names]
                absent = [n for n, k in zip(names, keys) if k not in lq_index] if lq_index is not None else []
                if absent:
                    raise ValueError(f"meta_info_file {opt['meta_info_file']}: {len(absent)} name(s) not in "
                                     f'{self.lq_folder}: {first(absent)}')
            else:
                keys = sorted(lq_index)
            if not keys:
                raise ValueError(f'No images in {self.lq_folder}.')
            for key in keys:
                gt_name = None
                if self.gt_folder:
                    gt_key = next((c for c in mapper(key) if c in gt_index), None)
                    if gt_key is None:
                        missing.append(lq_index[key])
                        continue
                    gt_name = gt_index[gt_key]
                pairs.append((lq_index[key], gt_name))
            if missing:
                raise ValueError(f'{len(missing)} of {len(keys)} hazy image(s) in {self.lq_folder} have no GT in '
                                 f'{self.gt_folder} (gt_name_rule={opt.get("gt_name_rule", "identity")!r}, '
                                 f'gt_name_regex={opt.get("gt_name_regex")!r}): {first(missing)}')
        if not pairs:
            raise ValueError(f'No pairs found for {self.lq_folder}.')
        self.pairs = pairs
        # store keys are file names (LMDB keys of non-ASCII names are percent-encoded: decode them)
        self.keys = [urllib.parse.unquote(lq) if lmdb else image_key(lq) for lq, _ in pairs]

    def _path(self, folder, name):
        return name if self.backend == 'lmdb' else osp.join(folder, name)

    def _check_sizes(self):
        mode = self.opt.get('check_images', True)
        if mode not in (True, False, 'full'):
            raise ValueError(f"check_images must be true, false or 'full', got {mode!r}.")
        if mode is False:
            return
        lmdb = self.backend == 'lmdb'
        bad, mismatch, small = [], [], []
        sizes = {}

        def size_of(folder, name, shapes):
            if lmdb:
                return shapes[name]
            path = osp.join(folder, name)
            if (folder, name) not in sizes:
                hw = image_size(path)
                if hw is None or not tail_ok(path):
                    bad.append(path)
                sizes[(folder, name)] = hw
            return sizes[(folder, name)]

        for lq, gt in self.pairs:
            hw_lq = size_of(self.lq_folder, lq, self.lq_shapes)
            hw_gt = size_of(self.gt_folder, gt, self.gt_shapes) if gt else None
            if hw_lq is None or (gt and hw_gt is None):
                continue
            if hw_gt is not None and hw_gt != hw_lq and not (
                    self.crop_gt_to_lq and hw_gt[0] >= hw_lq[0] and hw_gt[1] >= hw_lq[1]):
                mismatch.append(f'{lq} {hw_lq[1]}x{hw_lq[0]} vs {gt} {hw_gt[1]}x{hw_gt[0]}')
            if self.train and self.gt_size and min(hw_lq) < int(self.gt_size):
                small.append(f'{lq} {hw_lq[1]}x{hw_lq[0]}')
        if bad:
            raise ValueError(f'{len(bad)} unreadable or truncated image(s): {first(bad)}')
        if mismatch:
            raise ValueError(f'{len(mismatch)} hazy/GT pair(s) differ in size (WxH): {first(mismatch)}'
                             + ('' if self.crop_gt_to_lq else '; set crop_gt_to_lq: true if the GT is larger by a '
                                'border'))
        if small:
            raise ValueError(f'{len(small)} image(s) smaller than gt_size={self.gt_size}: {first(small)}')
        if mode == 'full':
            self._full_decode_check()

    def _full_decode_check(self):
        jobs = [(self.lq_folder, lq, 'lq') for lq, _ in self.pairs]
        jobs += sorted({(self.gt_folder, gt, 'gt') for _, gt in self.pairs if gt})

        def check(job):
            folder, name, client_key = job
            try:
                decode_image(self._read_bytes(folder, name, client_key), name)
                return None
            except Exception:
                return self._path(folder, name)

        with ThreadPoolExecutor(int(self.opt.get('check_workers', 4))) as ex:
            bad = [b for b in ex.map(check, jobs) if b]
        self.file_client = None  # reopened lazily in each worker
        if bad:
            raise ValueError(f'{len(bad)} image(s) cannot be decoded: {first(bad)}')

    def _check_store(self):
        """Every image has a row in the feature store (its provenance and kinds are checked by the conditioner)."""
        store = FeatureStore.load(self.feature_store)
        absent = [k for k in self.keys if k not in store]
        if absent:
            raise ValueError(f'{len(absent)} of {len(self.keys)} image(s) are missing from the feature store '
                             f'{self.feature_store}: {first(absent)}. Re-run scripts/extract_clip_features.py on '
                             f'{self.lq_folder} (it skips images already done).')

    # --------------------------------------------------------------------------------------------------- items
    def _read_bytes(self, folder, name, client_key):
        if self.backend == 'lmdb':
            with lmdb_env(folder).begin(write=False) as txn:
                return txn.get(name.encode('ascii'))
        if self.file_client is None:
            self.file_client = FileClient('disk')
        return self.file_client.get(self._path(folder, name), client_key)

    def _load(self, folder, name, client_key):
        try:
            buf = self._read_bytes(folder, name, client_key)
        except Exception as err:
            raise ValueError(f'Cannot read {self._path(folder, name)} from {folder}: {err}') from err
        if buf is None:
            raise ValueError(f'Cannot read {self._path(folder, name)}: key not found in {folder}.')
        return decode_image(buf, self._path(folder, name))

    def __getitem__(self, index):
        lq_name, gt_name = self.pairs[index]
        img_lq = self._load(self.lq_folder, lq_name, 'lq')
        img_gt = self._load(self.gt_folder, gt_name, 'gt') if gt_name else None
        if img_gt is not None and img_gt.shape[:2] != img_lq.shape[:2]:
            (h, w), (hg, wg) = img_lq.shape[:2], img_gt.shape[:2]
            if not (self.crop_gt_to_lq and hg >= h and wg >= w):
                raise ValueError(f'Size mismatch: {lq_name} {w}x{h} vs {gt_name} {wg}x{hg}.')
            y, x = (hg - h) // 2, (wg - w) // 2
            img_gt = img_gt[y:y + h, x:x + w]
        # crop record in original lq pixels: what was cut, then the flips and quarter turns (in that order)
        h, w = img_lq.shape[:2]
        top, left, height, width = 0, 0, h, w
        flips = (False, False, 0)
        if self.train:
            if self.gt_size:
                height = width = int(self.gt_size)
                img_lq, img_gt, (top, left) = random_crop_pair(img_lq, img_gt, height, self.edge_decay)
            (img_lq, img_gt), flips = augment_pair([img_lq, img_gt], self.opt.get('use_hflip', True),
                                                   self.opt.get('use_vflip', False), self.opt.get('use_rot', False))
        elif self.center_crop:
            height = width = int(self.center_crop)
            if h < height or w < width:
                raise ValueError(f'{lq_name} ({w}x{h}) is smaller than center_crop={height}.')
            top, left = (h - height) // 2, (w - width) // 2
            img_lq = img_lq[top:top + height, left:left + width]
            img_gt = None if img_gt is None else img_gt[top:top + height, left:left + width]
        item = {'lq': _to_tensor(img_lq), 'lq_path': self._path(self.lq_folder, lq_name), 'key': self.keys[index],
                'crop': torch.tensor([top, left, height, width, *flips], dtype=torch.long)}
        if img_gt is not None:
            item['gt'] = _to_tensor(img_gt)
            item['gt_path'] = self._path(self.gt_folder, gt_name)
        if self.feature_store:
            item['feature_store'] = str(self.feature_store)
        if self.domains is not None:
            item['domain'] = self.domains[index]
        return item

    def __len__(self):
        return len(self.pairs)


def _to_tensor(img):
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float()
