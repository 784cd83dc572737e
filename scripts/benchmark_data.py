#!/usr/bin/env python
"""Data-side speed of the CLIP half: dataset throughput and CLIP feature extraction, printed as one JSON object.

* dataset: ``CLIPPairedImageDataset`` serving ``--crops`` random ``--crop`` crops through a DataLoader, with their
  stored conditioning looked up by the run's conditioner as in training, from PNG folders and from LMDB, for each
  ``--workers`` count (img/s and img/s per worker; the first batch, which starts the workers, is not timed);
* extraction: ``scripts/extract_clip_features.py``'s loop (decode + open_clip transform + encode) on the generated
  folder, with a tiny CLIP (random weights, saved and loaded as a file) and with a random-init ViT-B-32 (the real
  architecture: realistic cost without the weights), on ``--device``.

Everything is generated in a temporary folder (random-texture images, ``--size`` square); nothing is downloaded.

Example::

    python scripts/benchmark_data.py --images 32 --workers 1 2 --device cpu
"""
import argparse
import contextlib
import json
import os
import os.path as osp
import platform
import sys
import tempfile
import time

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--images', type=int, default=32, help='generated hazy/GT pairs')
    p.add_argument('--size', type=int, default=320, help='generated image side')
    p.add_argument('--crop', type=int, default=256)
    p.add_argument('--crops', type=int, default=256, help='crops timed per data run')
    p.add_argument('--batch', type=int, default=8)
    p.add_argument('--workers', type=int, nargs='+', default=[1, 2])
    p.add_argument('--extract-batch', type=int, default=16)
    p.add_argument('--vit-images', type=int, default=32, help='images for the ViT-B-32 extraction run (0: skip)')
    p.add_argument('--device', default='cpu', help='cpu | cuda | auto (extraction)')
    return p.parse_args(argv)


if __name__ == '__main__':
    parse_args()  # --help and usage errors answer here, before the imports below (torch and basicsr take seconds)

import mixcl_arch  # noqa: E402,F401  (before basicsr)

TINY_NAME = 'mixcl-bench-tiny-clip'
TINY_CFG = {'embed_dim': 512,
            'vision_cfg': {'image_size': 32, 'layers': 1, 'width': 32, 'patch_size': 16, 'head_width': 16},
            'text_cfg': {'context_length': 77, 'vocab_size': 49408, 'width': 32, 'heads': 2, 'layers': 1}}


def make_data(root, n, size):
    import cv2
    import numpy as np
    from basicsr.utils.lmdb_util import make_lmdb_from_imgs
    rng = np.random.default_rng(0)
    names = [f'{i:04d}' for i in range(n)]
    for sub in ('hazy', 'GT'):
        os.makedirs(osp.join(root, sub), exist_ok=True)
    for name in names:
        gt = cv2.resize(rng.integers(0, 256, (size // 8, size // 8, 3), dtype=np.uint8), (size, size))
        cv2.imwrite(osp.join(root, 'GT', name + '.png'), gt)
        cv2.imwrite(osp.join(root, 'hazy', name + '.png'), (gt * 0.6 + 90).astype(np.uint8))
    for sub in ('hazy', 'GT'):
        make_lmdb_from_imgs(osp.join(root, sub), osp.join(root, sub + '.lmdb'), [n + '.png' for n in names], names,
                            multiprocessing_read=False)


def bench_dataset(root, store, clip_opt, backend, workers, args):
    """Crops per second of the dataset with the stored conditioning of training: the loader serves images, keys and
    crop records, the run's conditioner (main process, as the model's ``feed_data``) looks the keys up in ``store``."""
    import types

    import torch
    from basicsr.data import build_dataset
    from torch.utils.data import DataLoader

    from mixcl_arch.conditioning.conditioner import CondBatch, build_conditioner
    from mixcl_arch.conditioning.config import ConditioningConfig
    cfg = ConditioningConfig.from_options({'clip': clip_opt, 'conditioning': {'source': 'store', 'extra': ['image']}})
    cond = build_conditioner(cfg, types.SimpleNamespace(num_cond=2, cond_dim=512), stores=[store])
    opt = dict(name='bench', type='CLIPPairedImageDataset', phase='train', gt_size=args.crop, use_hflip=True,
               dataroot_lq=osp.join(root, 'hazy'), dataroot_gt=osp.join(root, 'GT'), io_backend={'type': 'disk'},
               feature_store=store)
    if backend == 'lmdb':
        opt.update(dataroot_lq=osp.join(root, 'hazy.lmdb'), dataroot_gt=osp.join(root, 'GT.lmdb'),
                   io_backend={'type': 'lmdb'})
    t = time.perf_counter()
    ds = build_dataset(opt)
    build_s = time.perf_counter() - t
    loader = DataLoader(ds, batch_size=args.batch, shuffle=True, num_workers=workers, drop_last=True,
                        persistent_workers=workers > 0)
    it = iter(loader)
    next(it)
    n, t = 0, time.perf_counter()
    while n < args.crops:
        try:
            b = next(it)
        except StopIteration:
            it = iter(loader)
            continue
        vectors = cond(CondBatch.from_data(b, b['lq']))
        n += b['lq'].shape[0]
    dt = time.perf_counter() - t
    assert vectors.shape[1:] == (2, 512) and b['lq'].shape[-1] == args.crop
    del it, loader
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return {'backend': backend, 'workers': workers, 'crops': n, 'img_per_s': round(n / dt, 1),
            'img_per_s_per_worker': round(n / dt / max(workers, 1), 1), 'construct_s': round(build_s, 3)}


def bench_extract(prior, root, out, batch, limit=None):
    import shutil

    from mixcl_arch.clip.store import FeatureStore
    src = osp.join(root, 'hazy')
    if limit:
        src = osp.join(root, f'hazy_first{limit}')
        os.makedirs(src, exist_ok=True)
        for name in sorted(os.listdir(osp.join(root, 'hazy')))[:limit]:
            shutil.copy(osp.join(root, 'hazy', name), src)
    extract = _load_extract()
    s = extract(prior, src, out, batch_size=batch, num_workers=1, save_every=0, overwrite=True, progress=False)
    assert len(FeatureStore.load(out)) == s['new']
    return {'images': s['new'], 'img_per_s': s['img_per_s'], 'device': s['device']}


def _load_extract():
    import importlib.util
    spec = importlib.util.spec_from_file_location('extract_clip_features',
                                                  osp.join(ROOT, 'scripts', 'extract_clip_features.py'))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.extract


def main(argv=None):
    args = parse_args(argv)
    import open_clip
    import torch

    from mixcl_arch.clip.prior import CLIPPrior
    from mixcl_arch.clip.weights import register_model_cfg
    torch.manual_seed(0)
    result = {'host': {'cpus': os.cpu_count(), 'torch': torch.__version__, 'python': platform.python_version(),
                       'cuda': torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
              'setup': {'images': args.images, 'size': args.size, 'crop': args.crop, 'batch': args.batch}}
    with tempfile.TemporaryDirectory(prefix='mixcl_bench_data_') as tmp:
        root = osp.join(tmp, 'data')
        with contextlib.redirect_stdout(sys.stderr):  # BasicSR's LMDB writer prints; stdout stays pure JSON
            make_data(root, args.images, args.size)
        register_model_cfg(TINY_NAME, TINY_CFG)
        clip_file = osp.join(tmp, 'tiny_clip.pt')
        torch.save({'state_dict': open_clip.create_model(TINY_NAME, pretrained=None).state_dict()}, clip_file)
        clip_opt = {'model': TINY_NAME, 'pretrained': clip_file, 'model_cfg': TINY_CFG}
        tiny = CLIPPrior(**clip_opt, device=args.device)
        store = osp.join(tmp, 'store.pt')
        result['extract_tiny_clip'] = bench_extract(tiny, root, store, args.extract_batch)
        if args.vit_images:
            model, _, preprocess = open_clip.create_model_and_transforms('ViT-B-32', pretrained=None)
            vit = CLIPPrior.from_model(model, preprocess, open_clip.get_tokenizer('ViT-B-32'), 'ViT-B-32(random)',
                                       device=tiny.device)
            result['extract_vit_b32_random_init'] = bench_extract(vit, root, osp.join(tmp, 'vit.pt'),
                                                                  args.extract_batch, limit=args.vit_images)
        result['dataset'] = [bench_dataset(root, store, clip_opt, backend, w, args) for backend in ('disk', 'lmdb')
                             for w in args.workers]
    print(json.dumps(result, indent=2))
    return result


if __name__ == '__main__':
    main()
