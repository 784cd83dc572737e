"""Paired hazy / clear dataset with CLIP conditioning (``CLIPPairedImageDataset``)."""
import os
import os.path as osp
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from basicsr.utils import FileClient
from basicsr.utils.registry import DATASET_REGISTRY
from torch.utils import data

from mixcl_arch.clip.cliphaze_cond import CLIPHazeCondConfig, crop_density, density_mismatches
from mixcl_arch.clip.conditioning import COND_MODES, PRIMARY_SET, parse_extra
from mixcl_arch.clip.store import FeatureStore, image_key
from mixcl_arch.utils.lmdb_tools import lmdb_env, read_meta_info

from .clip_data_util import (GTNameMapper, augment_pair, decode_image, first, image_size, index_unique,
                             random_crop_pair, read_pair_csv, scan_images, standin_text_feature, strip_ext, tail_ok)

COND_SOURCES = ('store', 'oracle', 'none')


@DATASET_REGISTRY.register()
class CLIPPairedImageDataset(data.Dataset):
    """Hazy (lq) / clear (gt) pairs with their CLIP conditioning, after ``basicsr/data/paired_image_dataset.py``.

    Everything that can be checked is checked at construction (missing GT, size mismatches, unreadable or truncated
    images, images missing from the feature store, a store made with other CLIP options), with errors naming the
    files, or the counts and the first few names.

    Pair sources (first match wins):

    * ``meta_file``: pair CSV ``hazy,gt,domain,...`` (scripts/make_haze_pairs.py), paths relative to
      ``dataroot_lq`` / ``dataroot_gt`` (LMDB: the keys are these paths without extension);
    * ``meta_info_file``: BasicSR list, first token of each line is an lq name (looked up like a scanned name);
    * otherwise every image under ``dataroot_lq`` (disk: recursive scan; LMDB: its ``meta_info.txt``), its GT found
      by ``gt_name_rule`` / ``gt_name_regex`` by stem (the GT extension may differ).

    Batch keys: 'lq', 'gt' (3, H, W) float32 RGB in [0, 1], 'lq_path', 'gt_path' and, when ``cond_source`` is not
    'none': 'text' (E,) primary vector, 'domain_prob' (D,), 'cond' (K, E) (primary vector then ``cond_extra``);
    with ``cond_density``: 'density' (1, h, w) float32 in [0, 1], the store's low-resolution haze-density map cut to
    the image crop and flipped / rotated with it (sample j centred on crop pixel (j + 0.5) * s - 0.5, s the store
    scale, see :func:`mixcl_arch.clip.cliphaze_cond.crop_density`); with ``cond_embedding``: 'embedding' (E,), the
    store's image embedding (CLIPHaze's conditioning inputs).

    Args:
        opt (dict): Options:

            - dataroot_lq (str): hazy folder, or ``.lmdb`` folder with io_backend lmdb. Required.
            - dataroot_gt (str | None): clear folder / ``.lmdb``. Required for phase 'train'; without it items have
              no 'gt' / 'gt_path'.
            - io_backend (dict): ``{type: disk}`` (default, BasicSR FileClient) or ``{type: lmdb}`` (opened and
              checked at construction by ``mixcl_arch.utils.lmdb_tools.lmdb_env``: one read-only environment per
              database and process, shared by all datasets and forked workers).
            - phase (str): 'train' (random crops + augmentation) or anything else (test: full image or centre crop).
              BasicSR sets it from the datasets key.
            - meta_file (str | None): Pair CSV (see above); needed by ``cond_source: oracle``.
            - meta_info_file (str | None): BasicSR meta info list.
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
            - cond_source (str): 'store' (default when feature_store is set), 'oracle' (domain label from
              meta_file's domain column) or 'none' (default otherwise).
            - cond_mode (str): 'hard' (default, the reference) or 'soft'.
            - cond_extra (list[str]): extra vectors after the primary one: 'image', '<prompt set>',
              '<set>:hard|soft', 'domain:soft' (see mixcl_arch.clip.conditioning). Needs a feature store.
            - feature_store (str | None): Store written by scripts/extract_clip_features.py.
            - clip (dict | None): CLIP options the store must have been made with (model, pretrained, domains,
              templates, prompt_sets, model_cfg); keys left out are not checked.
            - cond_dim (int, default 512): width of a conditioning vector (checked against the store).
            - domain_column (str, default 'domain'): CSV column of the oracle label.
            - oracle_domains (list[str] | None): Oracle class order (default: the store's domains, else
              clip.domains, else indoor/outdoor when the labels fit, else the sorted labels).
            - Oracle without a store: the vector of a domain is ``standin_text_feature(domain)``, a fixed unit vector
              seeded by crc32(domain name) (deterministic, NOT a CLIP feature).
            - cond_density (bool, default False): add 'density' from the feature store's 'density' maps
              (``scripts/extract_clip_features.py --density``). A train crop (``gt_size``) must be a multiple of the
              store scale; a crop offset that is not is served by linear interpolation between stored blocks.
            - cond_embedding (bool, default False): add 'embedding' (the store's image embedding).
            - cliphaze_cond (dict | None): the options the maps were made with
              (:class:`~mixcl_arch.clip.cliphaze_cond.CLIPHazeCondConfig`), checked against the store; None: not
              checked.
    """

    def __init__(self, opt):
        super().__init__()
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
        self.cond_mode = opt.get('cond_mode') or 'hard'
        if self.cond_mode not in COND_MODES:
            raise ValueError(f'cond_mode must be one of {COND_MODES}, got {self.cond_mode!r}.')
        self.cond_extra = list(opt.get('cond_extra') or [])
        self.cond_source = opt.get('cond_source') or ('store' if opt.get('feature_store') else 'none')
        if self.cond_source not in COND_SOURCES:
            raise ValueError(f'cond_source must be one of {COND_SOURCES}, got {self.cond_source!r}.')
        self.cond_dim = int(opt.get('cond_dim', 512))
        self.cond_density = bool(opt.get('cond_density', False))
        self.cond_embedding = bool(opt.get('cond_embedding', False))

        self._build_pairs()
        self._check_sizes()
        self._setup_condition()

    # ------------------------------------------------------------------------------------------------- pairs
    def _lmdb_keys(self, folder):
        if not osp.isfile(osp.join(folder, 'meta_info.txt')):
            raise FileNotFoundError(f'{folder}: not a BasicSR LMDB (no meta_info.txt).')
        lmdb_env(folder)  # a zero-byte or truncated data.mdb fails here, not with SIGBUS at the first read
        # BasicSR's own writer lists 'key.png' while the stored key has no extension
        return {strip_ext(key): (shape[0], shape[1]) for key, shape, _ in read_meta_info(folder)}

    @staticmethod
    def _csv_lmdb_key(rel):
        """LMDB key of a CSV path: scripts/create_lmdb.py's rule (percent-encoded when the name is non-ASCII)."""
        from mixcl_arch.utils.lmdb_tools import path_to_key
        rel = rel.replace(os.sep, '/')
        return path_to_key(rel, non_ascii='quote') if not rel.isascii() else strip_ext(rel)

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
            lq_files = scan_images(self.lq_folder) if not opt.get('meta_file') else None
            lq_index = None if lq_files is None else index_unique([(image_key(r), r) for r in lq_files],
                                                                  self.lq_folder)
            gt_index = {}
            if self.gt_folder:
                gt_index = index_unique([(image_key(r), r) for r in scan_images(self.gt_folder)], self.gt_folder)
        self.domain_labels = None
        pairs, missing = [], []
        if opt.get('meta_file'):
            rows = read_pair_csv(opt['meta_file'], need_domain=self.cond_source_wants_oracle(),
                                 domain_column=opt.get('domain_column', 'domain'))
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
                labels.append(row.get(opt.get('domain_column', 'domain')))
            if missing:
                raise ValueError(f"{opt['meta_file']}: {len(missing)} listed pair(s) not found under "
                                 f'{self.lq_folder} / {self.gt_folder}: {first(missing)}')
            self.domain_labels = labels
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

    def cond_source_wants_oracle(self):
        return self.cond_source == 'oracle'

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

    # ---------------------------------------------------------------------------------------------- conditioning
    def _setup_condition(self):
        opt = self.opt
        self.store = None
        self.rows = None
        self.oracle_idx = None
        store_path = opt.get('feature_store')
        if self.cond_density or self.cond_embedding:
            self._setup_cliphaze(store_path)
        if self.cond_source == 'none':
            return
        if self.cond_source == 'store' and not store_path:
            raise ValueError('cond_source: store needs feature_store (write it with scripts/extract_clip_features.py).')
        if self.cond_extra and not store_path:
            raise ValueError(f'cond_extra {self.cond_extra} needs a feature_store (image embeddings / prompt sets).')
        if store_path:
            self._open_store(store_path)
            self.extra = parse_extra(self.cond_extra, self.cond_mode, set_names=self.store.prompt_set_names)
        else:
            self.extra = []
        if self.cond_source == 'oracle':
            self._setup_oracle()

    def _open_store(self, store_path):
        """Load and check the feature store once; its rows for this dataset's images."""
        if self.store is not None:
            return
        self.store = FeatureStore.load(store_path)
        self.store.check(self.opt.get('clip'), embed_dim=self.cond_dim, path=store_path)
        absent = [k for k in self.keys if k not in self.store]
        if absent:
            raise ValueError(f'{len(absent)} of {len(self.keys)} image(s) are missing from the feature store '
                             f'{store_path}: {first(absent)}. Re-run scripts/extract_clip_features.py on '
                             f'{self.lq_folder} (it skips images already done).')
        self.rows = self.store.rows(self.keys)

    def _setup_cliphaze(self, store_path):
        """CLIPHaze's inputs (cond_density, cond_embedding) come from the store; check its density provenance."""
        if not store_path:
            raise ValueError('cond_density / cond_embedding need a feature_store (scripts/extract_clip_features.py '
                             '--density).')
        self._open_store(store_path)
        if not self.cond_density:
            return
        meta = self.store.spatial_meta.get('density')
        if meta is None:
            raise ValueError(f'cond_density: the feature store {store_path} has no density maps; re-run '
                             'scripts/extract_clip_features.py with --density.')
        if self.opt.get('cliphaze_cond') is not None:
            diffs = density_mismatches(meta, CLIPHazeCondConfig.from_opt(self.opt['cliphaze_cond']))
            if diffs:
                raise ValueError(f'Density maps of the feature store {store_path} do not match cliphaze_cond: '
                                 + '; '.join(diffs) + '. Re-run scripts/extract_clip_features.py --density '
                                 '--overwrite with these options.')
        self.density_scale = int(meta['store_scale'])
        if self.train and self.gt_size and int(self.gt_size) % self.density_scale:
            raise ValueError(f'cond_density: gt_size {self.gt_size} must be a multiple of the density store scale '
                             f'{self.density_scale}, so that the map covers the crop exactly (flips, rotations).')

    def _setup_oracle(self):
        opt = self.opt
        if self.domain_labels is None:
            raise ValueError('cond_source: oracle needs meta_file, a pair CSV with a '
                             f"{opt.get('domain_column', 'domain')!r} column (scripts/make_haze_pairs.py).")
        labels = [str(v) for v in self.domain_labels]
        if opt.get('oracle_domains'):
            domains = [str(d) for d in opt['oracle_domains']]
        elif self.store is not None:
            domains = self.store.domains
        elif (opt.get('clip') or {}).get('domains'):
            domains = [str(d) for d in opt['clip']['domains']]
        elif set(labels) <= {'indoor', 'outdoor'}:
            domains = ['indoor', 'outdoor']
        else:
            domains = sorted(set(labels))
        unknown = sorted(set(labels) - set(domains))
        if unknown:
            raise ValueError(f"{opt['meta_file']}: domain label(s) {unknown} not among the domains {domains}.")
        self.oracle_domains = domains
        self.oracle_idx = torch.tensor([domains.index(v) for v in labels], dtype=torch.long)
        if self.store is not None:
            self.oracle_text = self.store.domain_text
        else:
            self.oracle_text = torch.stack([standin_text_feature(d, self.cond_dim) for d in domains])

    def condition(self, index):
        """Conditioning of item ``index``: dict with 'text' (E,), 'domain_prob' (D,), 'cond' (K, E), or {}."""
        if self.cond_source == 'none':
            return {}
        out = None
        if self.store is not None:
            out = self.store.get_rows(self.rows[index:index + 1])
        if self.cond_source == 'oracle':
            d = int(self.oracle_idx[index])
            probs = torch.zeros(1, len(self.oracle_domains))
            probs[0, d] = 1.0
            text = self.oracle_text[d:d + 1]
            out = dict(out or {}, probs=probs, text_hard=text, text_soft=text)
        primary = out[f'text_{self.cond_mode}']
        vecs = [primary]
        for kind, name, mode in self.extra:
            if kind == 'image':
                vecs.append(out['image_emb'])
            else:
                vecs.append(out[f'text_{mode}'] if name == PRIMARY_SET else out[f'{name}_text_{mode}'])
        cond = torch.cat(vecs, dim=0).float()
        return {'text': primary[0].float().clone(), 'domain_prob': out['probs'][0].float().clone(), 'cond': cond}

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
        # the stored low-resolution density map follows the image crop and augmentation, as (h, w, 1)
        dens = self.store.get_spatial('density', self.rows[index]) if self.cond_density else None
        if self.train:
            if self.gt_size:
                s = int(self.gt_size)
                img_lq, img_gt, (y, x) = random_crop_pair(img_lq, img_gt, s, self.edge_decay, return_offsets=True)
                dens = None if dens is None else crop_density(dens, y, x, s, s, self.density_scale)
            dens = None if dens is None else dens.permute(1, 2, 0).numpy()
            img_lq, img_gt, dens = augment_pair([img_lq, img_gt, dens], self.opt.get('use_hflip', True),
                                                self.opt.get('use_vflip', False), self.opt.get('use_rot', False))
        elif self.center_crop:
            s = int(self.center_crop)
            h, w = img_lq.shape[:2]
            if h < s or w < s:
                raise ValueError(f'{lq_name} ({w}x{h}) is smaller than center_crop={s}.')
            y, x = (h - s) // 2, (w - s) // 2
            img_lq = img_lq[y:y + s, x:x + s]
            img_gt = None if img_gt is None else img_gt[y:y + s, x:x + s]
            dens = None if dens is None else crop_density(dens, y, x, s, s, self.density_scale)
        item = {'lq': _to_tensor(img_lq), 'lq_path': self._path(self.lq_folder, lq_name)}
        if img_gt is not None:
            item['gt'] = _to_tensor(img_gt)
            item['gt_path'] = self._path(self.gt_folder, gt_name)
        item.update(self.condition(index))
        if dens is not None:
            item['density'] = dens if torch.is_tensor(dens) else _to_tensor(dens)
        if self.cond_embedding:
            item['embedding'] = self.store.get_rows(self.rows[index:index + 1])['image_emb'][0].float().clone()
        return item

    def __len__(self):
        return len(self.pairs)


def _to_tensor(img):
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float()
