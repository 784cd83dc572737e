#!/usr/bin/env python
"""Compute the CLIP conditioning of every hazy image of a dataset into a feature store (one file per split).

Input: an image folder (recursive), a BasicSR LMDB (``*.lmdb`` with meta_info.txt), optionally restricted to the hazy
images of a pair CSV (``--meta-file``). Images go through open_clip's own eval transform (PIL path). Output: a
:class:`mixcl_arch.clip.store.FeatureStore` keyed by the image path relative to the folder without extension (the LMDB
key), with its provenance. A re-run skips names already in the store (after checking the store was made with the same
CLIP options); the store is rewritten atomically every ``--save-every`` batches and at the end. Prints one JSON
summary per store (images per domain, mean confidence, speed).

Every store written is recorded in the manifest of its folder (``.mixcl_outputs.jsonl``, see
:mod:`mixcl_arch.utils.output_guard`). ``--overwrite`` discards a store and therefore replaces only one recorded
there as this tool's own and unchanged since; a resumed store keeps every row it holds, so any store made with the
same CLIP options can be completed (and is this tool's own afterwards).

Examples::

    # every dataset of an options file that names a feature_store (clip: section gives model / weights / prompts)
    python scripts/extract_clip_features.py -opt options/train/train_MixCLDehazeNet_S_RESIDE6K.yml
    # one folder, weights from a local file
    python scripts/extract_clip_features.py --dataroot datasets/RESIDE-6K/train/hazy \\
        --out datasets/RESIDE-6K/clip_ViT-B-32_train.pt --model ViT-B-32 --pretrained clip/open_clip_model.safetensors
    # extra prompt set and an LMDB
    python scripts/extract_clip_features.py --dataroot datasets/RESIDE-6K/train/hazy.lmdb --out f.pt \\
        --prompt-set density=thin haze,moderate haze,dense haze
    # CLIPHaze's inputs: the zero-shot haze-density map (stored at 1/8, fp16) and the image embedding
    python scripts/extract_clip_features.py --dataroot datasets/NH-HAZE/train/hazy --density --pretrained w.safetensors
    # offline stand-in without CLIP weights: density 1 - t of the dark channel prior, stand-in embedding (NOT CLIP)
    python scripts/extract_clip_features.py --dataroot datasets/NH-HAZE/train/hazy --density --density-source dcp \\
        --standin-domain outdoor
"""
import argparse
import inspect
import json
import os
import os.path as osp
import sys
import time
import urllib.parse

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument('-opt', '--opt', help='options YAML: its clip: section, and (without --dataroot) every dataset '
                   'with a feature_store')
    p.add_argument('--dataroot', help='hazy image folder or .lmdb folder')
    p.add_argument('--meta-file', help='pair CSV (hazy,gt,...): only its hazy images')
    p.add_argument('--out', help='feature store file (default: <parent of dataroot>/clip_<model>_<split>.pt)')
    p.add_argument('--model', help='open_clip model name (clip.model)')
    p.add_argument('--pretrained', help='open_clip tag or local weights file (clip.pretrained)')
    p.add_argument('--model-cfg', help='JSON file with an open_clip model config (clip.model_cfg)')
    p.add_argument('--domains', nargs='+', help='primary classes (clip.domains)')
    p.add_argument('--templates', nargs='+', help='prompt templates with {} (clip.templates)')
    p.add_argument('--prompt-set', action='append', default=[], metavar='NAME=CLASS,CLASS,...',
                   help='extra prompt set (clip.prompt_sets), repeatable')
    p.add_argument('--quick-gelu', choices=['auto', 'true', 'false'], default=None, help='clip.quick_gelu')
    p.add_argument('--clip-torchscript', action='store_true',
                   help="--pretrained is a TorchScript archive such as OpenAI's ViT-B-32.pt (clip.torchscript; "
                   'TorchScript is code: only for files you trust)')
    p.add_argument('--device', default='auto', help='auto | cpu | cuda[:N]')
    p.add_argument('--dtype', default=None, help='fp32 | fp16 | bf16 (clip.dtype)')
    p.add_argument('--batch-size', type=int, default=64)
    p.add_argument('--num-workers', type=int, default=2, help='image decoding workers')
    p.add_argument('--save-every', type=int, default=50, help='rewrite the store every N batches (resumable)')
    p.add_argument('--overwrite', action='store_true', help='start over instead of resuming an existing store (only '
                   'a store this tool wrote, never anyone else\'s file)')
    p.add_argument('--quiet', action='store_true', help='no progress bar')
    g = p.add_argument_group('CLIPHaze conditioning (cliphaze_cond: section of -opt, overridden by these)')
    g.add_argument('--density', action='store_true', help="also store the haze-density map of every image ('density' "
                   'maps at 1/--density-scale, fp16) and CLIPHaze\'s embedding (image_emb)')
    g.add_argument('--density-source', choices=['clip', 'dcp'], help='clip: zero-shot CLIP map; dcp: 1 - t of the '
                   'dark channel prior (NOT CLIP, needs no weights)')
    g.add_argument('--density-crop', type=int, help='crop side (default 224)')
    g.add_argument('--density-stride', type=int, help='crop stride (default 112)')
    g.add_argument('--density-short-side', help='resize the short side to this before cropping (default 448; none)')
    g.add_argument('--density-normalize', choices=['minmax', 'none'], help='per-image min-max (default) or none')
    g.add_argument('--density-scale', type=int, help='stored map resolution 1/N (default 8)')
    g.add_argument('--hazy-template', action='append', help='hazy prompt template with {} (repeatable)')
    g.add_argument('--clear-template', action='append', help='clear prompt template with {} (repeatable)')
    g.add_argument('--scene', action='append', help='scene word filled into the templates (repeatable)')
    g.add_argument('--embedding-source', help="clip | standin (NOT CLIP) | a registered hook")
    g.add_argument('--standin-domain', help='domain of the stand-in embedding for images without a CSV label')
    g.add_argument('--dcp-param', action='append', default=[], metavar='KEY=VALUE',
                   help='DCP option for --density-source dcp (preset=lab_report, patch_radius=7, ...)')
    return p.parse_args(argv)


if __name__ == '__main__':
    parse_args()  # --help and usage errors answer here, before the imports below (torch and basicsr take seconds)

import mixcl_arch  # noqa: E402,F401  (before basicsr)
from mixcl_arch.utils.output_guard import OutputManifest, check_outputs_apart  # noqa: E402

TOOL = 'extract_clip_features'


def conditioning_options(args, opt):
    """The run's :class:`~mixcl_arch.conditioning.config.ConditioningConfig`: the YAML's ``clip:`` and
    ``cliphaze_cond:`` sections (parsed by the config, the one reader) with the command line's overrides."""
    from mixcl_arch.clip.cliphaze_cond import CLIPHazeCondConfig
    from mixcl_arch.conditioning.config import ClipOptions, ConditioningConfig
    from mixcl_arch.utils.options import OptionError
    cfg = ConditioningConfig.from_options(opt or {})
    clip = cfg.clip.as_dict()
    if args.model_cfg:
        with open(args.model_cfg) as f:
            clip['model_cfg'] = json.load(f)
    if args.prompt_set:
        sets = dict(clip.get('prompt_sets') or {})
        for spec in args.prompt_set:
            name, sep, classes = spec.partition('=')
            if not sep or not classes:
                raise ValueError(f'--prompt-set {spec!r}: expected NAME=CLASS,CLASS,...')
            sets[name.strip()] = [c.strip() for c in classes.split(',') if c.strip()]
        clip['prompt_sets'] = sets
    if args.quick_gelu:
        clip['quick_gelu'] = None if args.quick_gelu == 'auto' else args.quick_gelu == 'true'
    flags = {'model': args.model, 'pretrained': args.pretrained, 'domains': args.domains, 'templates': args.templates,
             'dtype': args.dtype, 'torchscript': args.clip_torchscript or None}
    clip.update({k: v for k, v in flags.items() if v is not None})
    cliphaze = dict((opt or {}).get('cliphaze_cond') or {})  # raw keys, so derived defaults follow the overrides
    flags = {'density_source': args.density_source, 'crop': args.density_crop, 'stride': args.density_stride,
             'normalize': args.density_normalize, 'store_scale': args.density_scale,
             'hazy_templates': args.hazy_template, 'clear_templates': args.clear_template, 'scenes': args.scene,
             'embedding_source': args.embedding_source, 'standin_domain': args.standin_domain}
    cliphaze.update({k: v for k, v in flags.items() if v is not None})
    if args.density_short_side is not None:
        side = args.density_short_side.strip().lower()
        cliphaze['short_side'] = None if side in ('none', 'null', '') else int(side)
    if args.dcp_param:
        dcp = dict(cliphaze.get('dcp') or {})
        for spec in args.dcp_param:
            key, sep, value = spec.partition('=')
            if not sep:
                raise ValueError(f'--dcp-param {spec!r}: expected KEY=VALUE')
            dcp[key.strip()] = value.strip()
        cliphaze['dcp'] = dcp
    try:
        cliphaze = CLIPHazeCondConfig.from_opt(cliphaze)
    except ValueError as err:
        raise OptionError(str(err)) from None
    return cfg.replace(clip=ClipOptions.from_dict(clip), cliphaze=cliphaze)


def is_lmdb(path):
    return osp.isfile(osp.join(path, 'data.mdb')) and osp.isfile(osp.join(path, 'meta_info.txt'))


def list_keys(dataroot, meta_file=None):
    """[(key, name)]: store key and the name to read (relative path on disk, key in an LMDB)."""
    from mixcl_arch.data.clip_data_util import index_unique, read_pair_csv
    from mixcl_arch.utils.image_io import image_key, scan_images
    lmdb = is_lmdb(dataroot)
    if lmdb:
        from mixcl_arch.data.lmdb_tools import lmdb_env, read_meta_info
        lmdb_env(dataroot)  # a zero-byte or truncated data.mdb fails here, not with SIGBUS at the first read
        avail = [image_key(k) for k, _, _ in read_meta_info(dataroot)]  # BasicSR's writer lists 'key.png'
    else:
        avail = scan_images(dataroot, followlinks=True) if not meta_file else None
    if meta_file:
        from mixcl_arch.data.clip_paired_image_dataset import CLIPPairedImageDataset
        names = [r['hazy'].replace(os.sep, '/') for r in read_pair_csv(meta_file)]
        # the LMDB key of a CSV path follows scripts/create_lmdb.py (percent-encoded non-ASCII names)
        names = list(dict.fromkeys(CLIPPairedImageDataset._csv_lmdb_key(n) if lmdb else n for n in names))
        if lmdb:
            have = set(avail)
            missing = [n for n in names if n not in have]
        else:
            missing = [n for n in names if not osp.isfile(osp.join(dataroot, n))]
        if missing:
            raise FileNotFoundError(f'{meta_file}: {len(missing)} hazy image(s) not in {dataroot}, e.g. {missing[:5]}')
        avail = names
    if not avail:
        raise ValueError(f'No images in {dataroot}.')
    # store keys are file names without extension, the same on disk and in LMDB (where non-ASCII keys are quoted)
    items = [(urllib.parse.unquote(k) if lmdb else image_key(k), k) for k in avail]
    index_unique(items, dataroot)
    return items, lmdb


class _Images:
    """Decoded, preprocessed images for the DataLoader (LMDB through the shared checked environment of lmdb_tools):
    (key, CLIP input or None without ``preprocess``, (3, H, W) image in [0, 1] or None unless ``full``)."""

    def __init__(self, root, items, lmdb, preprocess, full=False):
        self.root, self.items, self.lmdb, self.preprocess, self.full = root, items, lmdb, preprocess, full

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        import numpy as np
        import torch
        from PIL import Image

        from mixcl_arch.utils.image_io import decode_image
        key, name = self.items[i]
        if self.lmdb:
            from mixcl_arch.data.lmdb_tools import lmdb_env
            with lmdb_env(self.root).begin(write=False) as txn:
                buf = txn.get(name.encode('ascii'))
            if buf is None:
                raise KeyError(f'{name} not in {self.root}')
        else:
            with open(osp.join(self.root, name), 'rb') as f:
                buf = f.read()
        img = decode_image(buf, osp.join(self.root, name))
        pixels = None
        if self.preprocess is not None:
            pixels = self.preprocess(Image.fromarray((np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)))
        full = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))) if self.full else None
        return key, pixels, full


def _collate(batch):
    import torch
    pixels = [p for _, p, _ in batch]
    return [k for k, _, _ in batch], (torch.stack(pixels) if pixels[0] is not None else None), [f for _, _, f in batch]


def csv_domains(meta_file, lmdb):
    """{store key: domain label} from a pair CSV's domain column ({} without a file or column)."""
    from mixcl_arch.data.clip_data_util import read_pair_csv
    from mixcl_arch.utils.image_io import image_key
    if not meta_file:
        return {}
    from mixcl_arch.data.clip_paired_image_dataset import CLIPPairedImageDataset
    rows = read_pair_csv(meta_file)
    key = (lambda n: urllib.parse.unquote(CLIPPairedImageDataset._csv_lmdb_key(n))) if lmdb else image_key
    return {key(r['hazy'].replace(os.sep, '/')): r['domain'] for r in rows if r.get('domain')}


def new_store(prior, cond, domains):
    """Empty store: CLIP's (prior given) or the stand-in's (NOT CLIP), with the 'density' kind when ``cond``."""
    import torch

    from mixcl_arch.clip.cliphaze_cond import standin_provenance
    from mixcl_arch.clip.store import FeatureStore
    from mixcl_arch.data.clip_data_util import standin_text_feature
    if prior is not None:
        store = FeatureStore.from_prior(prior)
    else:
        text = torch.stack([standin_text_feature(d, cond.embed_dim) for d in domains])
        store = FeatureStore(standin_provenance(domains, cond.embed_dim), {'domain': text})
    return store.add_spatial_kind('density', cond.provenance()) if cond is not None else store


def cliphaze_rows(prior, cond, store, keys, pixels, images, labels):
    """Store rows and density maps of a batch with CLIPHaze's conditioning (``cond``)."""
    import torch
    import torch.nn.functional as F

    from mixcl_arch.clip.cliphaze_cond import to_store_resolution
    from mixcl_arch.conditioning.conditioner import CondBatch
    from mixcl_arch.conditioning.config import ConditioningConfig
    from mixcl_arch.conditioning.kinds import Density, Embedding
    cfg = ConditioningConfig(cliphaze=cond)  # the conditioner's own kinds compute what the store will serve
    out = prior.from_pixels(pixels) if prior is not None else {}
    domains = [labels.get(k, cond.standin_domain) for k in keys]
    own_emb = cond.embedding_source != 'clip'  # CLIP's embedding is already in ``out`` (PIL path, as without cond)
    maps, embs = [], []
    for img, domain in zip(images, domains):  # one image at a time: sizes differ
        batch = CondBatch(img[None], domains=(domain, ) if domain else None)
        maps.append(to_store_resolution(Density().online(prior, batch, cfg), cond.store_scale)[0])
        if own_emb:
            embs.append(Embedding().online(prior, batch, cfg))
    if own_emb:
        out['image_emb'] = torch.cat(embs)
    if prior is None:  # stand-in: the domain label as a one-hot probability
        out['probs'] = F.one_hot(torch.tensor([store.domains.index(d) for d in domains]), len(store.domains)).float()
    return out, {'density': maps}


def same_provenance(a, b):
    """Provenance keys that differ between two stores' meta (CLIP or stand-in)."""
    keys = ('model', 'pretrained_kind', 'pretrained_sha256', 'quick_gelu', 'model_cfg', 'domains', 'templates',
            'prompt_sets', 'embed_dim', 'logit_scale')
    diffs = [k for k in keys if a.get(k) != b.get(k)]
    if a.get('pretrained_kind') == 'tag' and a.get('pretrained') != b.get('pretrained'):
        diffs.append('pretrained')
    return diffs


def store_manifest(out, overwrite):
    """The manifest of the store's folder, after checking that ``overwrite`` discards only this tool's own store.

    Raises:
        FileExistsError: ``overwrite`` while ``out`` exists and is not recorded as this tool's own (a user's file,
            another tool's, or a store changed since).
    """
    manifest = OutputManifest(osp.dirname(osp.abspath(out)), TOOL)
    if overwrite and osp.lexists(out) and not manifest.owns(out):
        raise FileExistsError(f'{out} exists and was not written by {TOOL} (no record in {manifest.path}, or changed '
                              'since); --overwrite replaces only its own stores: choose another --out or move the '
                              'file away (nothing was written).')
    return manifest


def extract(prior, dataroot, out, meta_file=None, batch_size=64, num_workers=2, save_every=50, overwrite=False,
            progress=True, cond=None, domains=('indoor', 'outdoor')):
    """Fill (or complete) the feature store ``out`` for ``dataroot``; returns the summary dict.

    ``cond`` (:class:`~mixcl_arch.clip.cliphaze_cond.CLIPHazeCondConfig`) adds CLIPHaze's density maps and
    embedding; ``prior`` may then be None (stand-in route, ``domains`` are the stand-in's classes).
    """
    import torch
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    from mixcl_arch.clip.cliphaze_cond import density_mismatches
    from mixcl_arch.clip.store import FeatureStore
    t0 = time.time()
    manifest = store_manifest(out, overwrite)
    items, lmdb = list_keys(dataroot, meta_file)
    labels = csv_domains(meta_file, lmdb) if cond is not None else {}
    fresh = new_store(prior, cond, list(domains))
    if prior is None:
        unknown = sorted(set(labels.values()) - set(fresh.domains))
        if unknown:
            raise ValueError(f'{meta_file}: domain label(s) {unknown} not among the stand-in domains {fresh.domains} '
                             '(--domains).')
    if osp.isfile(out) and not overwrite:
        store = FeatureStore.load(out)
        diffs = same_provenance(store.meta, fresh.meta)
        if sorted(store.spatial_meta) != sorted(fresh.spatial_meta):
            diffs.append(f'spatial kinds {sorted(store.spatial_meta)} vs {sorted(fresh.spatial_meta)}')
        elif cond is not None:
            diffs += density_mismatches(store.spatial_meta['density'], cond)
        if diffs:
            raise ValueError(f'{out} was made with other CLIP options ({", ".join(diffs)}); pass --overwrite to '
                             'start over, or another --out.')
    else:
        store = fresh
    todo = [it for it in items if it[0] not in store]

    def save():
        store.save(out)
        manifest.record(out)  # after every save: a resume after a kill finds the store recorded as it is

    device = prior.device if prior is not None else torch.device('cpu')
    loader = DataLoader(_Images(dataroot, todo, lmdb, prior.preprocess if prior is not None else None,
                                full=cond is not None), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers if todo else 0, collate_fn=_collate, pin_memory=device.type == 'cuda')
    t1 = time.time()
    with torch.no_grad():
        for i, (keys, pixels, images) in enumerate(tqdm(loader, desc=f'CLIP {osp.basename(out)}',
                                                        disable=not progress, unit='batch')):
            if cond is None:
                store.add(keys, prior.from_pixels(pixels))
            else:
                store.add(keys, *cliphaze_rows(prior, cond, store, keys, pixels, [x.to(device) for x in images],
                                               labels))
            if save_every and (i + 1) % save_every == 0:
                save()
    if todo or not osp.isfile(out):
        save()
    dt = time.time() - t1
    summary = {'out': out, 'dataroot': dataroot, 'backend': 'lmdb' if lmdb else 'disk', 'new': len(todo),
               'skipped': len(items) - len(todo), **store.summary(), 'device': str(device),
               'density_source': cond.density_source if cond is not None else None,
               'img_per_s': round(len(todo) / dt, 2) if todo and dt > 0 else None,
               'seconds': round(time.time() - t0, 2)}
    return summary


def jobs_from(args, opt, model):
    split_name = lambda root: osp.basename(osp.dirname(osp.abspath(root.rstrip('/'))))  # noqa: E731
    if args.dataroot:
        out = args.out or osp.join(osp.dirname(osp.dirname(osp.abspath(args.dataroot.rstrip('/')))),
                                   f"clip_{model}_{split_name(args.dataroot)}.pt")
        return [(args.dataroot, out, args.meta_file)]
    jobs = []
    for ds in ((opt or {}).get('datasets') or {}).values():
        if isinstance(ds, dict) and ds.get('feature_store') and ds.get('dataroot_lq'):
            jobs.append((ds['dataroot_lq'], ds['feature_store'], args.meta_file or ds.get('meta_file')))
    if not jobs:
        raise ValueError('Nothing to do: give --dataroot, or -opt with datasets that set dataroot_lq and '
                         'feature_store.')
    return jobs


def main(argv=None):
    args = parse_args(argv)
    opt = None
    if args.opt:
        from mixcl_arch.utils.options import load_yaml_file
        if not osp.isfile(args.opt):
            raise FileNotFoundError(f'Options file not found: {args.opt}')
        opt = load_yaml_file(args.opt)
    from mixcl_arch.clip.prior import CLIPPrior
    from mixcl_arch.clip.weights import CLIPWeightsError
    cfg = conditioning_options(args, opt)
    cond = cfg.cliphaze if args.density else None
    clip = cfg.clip.as_dict()
    # the stand-in route (DCP density, stand-in embedding) runs without CLIP weights
    standin = cond is not None and cond.density_source == 'dcp' and cond.embedding_source == 'standin'
    defaults = inspect.signature(CLIPPrior).parameters  # CLIPPrior's own defaults for what the options leave out
    model, domains = clip.get('model', defaults['model'].default), clip.get('domains', defaults['domains'].default)
    jobs = jobs_from(args, opt, 'standin' if standin else str(model).replace('/', '-'))
    for root, out, meta in jobs:  # fail on bad input before loading CLIP
        check_outputs_apart([out], [root, meta], 'feature store')
        store_manifest(out, args.overwrite)
        list_keys(root, meta)
    try:
        prior = None if standin else CLIPPrior(**cfg.clip.prior_kwargs(args.device))
    except CLIPWeightsError as err:
        print(f'error: {err}', file=sys.stderr)
        return 2
    for root, out, meta in jobs:
        s = extract(prior, root, out, meta, args.batch_size, args.num_workers, args.save_every, args.overwrite,
                    progress=not args.quiet, cond=cond, domains=domains)
        print(json.dumps(s), flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
