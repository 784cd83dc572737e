#!/usr/bin/env python
"""Build the embedded demo dataset from photographs bundled with scikit-image (no network needed).

Images (``skimage.data``) and the domain recorded for each (the oracle label of the demo's conditioning):

=============  =========  ==============================================================================
name           domain     why / depth
=============  =========  ==============================================================================
astronaut      indoor     NASA studio portrait of Eileen Collins; pseudo-depth
coffee         indoor     cup of coffee on a table; pseudo-depth
chelsea        indoor     Stefan van der Walt's cat photographed indoors; pseudo-depth (held out: test)
motorcycle     indoor     Middlebury 2014 "Motorcycle" (studio scene), left view with its REAL depth from the
                          ground-truth disparity: depth = f * baseline / (disp + doffs), f = 994.978 px,
                          baseline = 193.001 mm, doffs = 31.086 px (the quarter-resolution calibration that
                          matches skimage's 741x500 image); invalid (inf) disparities are inpainted
rocket         outdoor    SpaceX Falcon 9 on the launch pad, outdoors; pseudo-depth
=============  =========  ==============================================================================

Writes (default ``demo_output/data``)::

    OUT/clean/<name>.png         the clear photographs at full size
    OUT/depth/motorcycle.pfm     Middlebury disparity (inf = invalid), exactly as bundled
    OUT/domains.csv              file,domain
    OUT/{train,test}/{hazy,GT}/  + meta.csv, from scripts/make_haze_pairs.py (long side --long-side)

``OUT`` is wiped and rebuilt on each run only if it was made by this script (marker file); otherwise a non-empty
``OUT`` is an error. Prints make_haze_pairs' JSON summary.
"""
import argparse
import importlib.util
import os
import os.path as osp
import shutil
import sys

import cv2
import numpy as np

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, REPO)
from mixcl_arch.utils.haze import atomic_imwrite, atomic_write_text, write_pfm  # noqa: E402

MARKER = '.mixcl_demo_data'
DOMAINS = {'astronaut': 'indoor', 'coffee': 'indoor', 'chelsea': 'indoor', 'motorcycle': 'indoor', 'rocket': 'outdoor'}
MIDDLEBURY_MOTORCYCLE = {'focal': 994.978, 'baseline': 193.001, 'doffs': 31.086}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--out', default='demo_output/data', help='output folder (default demo_output/data)')
    p.add_argument('--long-side', type=int, default=256, help='long side of the dataset images (default 256)')
    p.add_argument('--versions', type=int, default=8, help='hazy versions per training image')
    p.add_argument('--test-versions', type=int, default=3, help='hazy versions per held-out image')
    p.add_argument('--holdout', default='chelsea', help='comma-separated names held out for validation')
    p.add_argument('--seed', type=int, default=0)
    return p.parse_args(argv)


def load_images():
    """The five bundled photographs as RGB uint8 plus the motorcycle disparity (H, W) float32."""
    import skimage.data as skd
    imgs = {name: getattr(skd, name)() for name in ('astronaut', 'coffee', 'chelsea', 'rocket')}
    left, _right, disp = skd.stereo_motorcycle()
    imgs['motorcycle'] = left
    if disp.shape != left.shape[:2]:
        raise RuntimeError(f'skimage motorcycle disparity {disp.shape} does not match the image {left.shape}')
    return imgs, disp.astype(np.float32)


def prepare_out(out):
    if osp.isdir(out) and os.listdir(out):
        if not osp.isfile(osp.join(out, MARKER)):
            raise FileExistsError(f'{out} is not empty and was not made by make_demo_data.py: choose another --out')
        shutil.rmtree(out)
    os.makedirs(out)
    atomic_write_text('made by scripts/make_demo_data.py; safe to delete\n', osp.join(out, MARKER))


def main(argv=None):
    args = parse_args(argv)
    holdout = [h.strip() for h in args.holdout.split(',') if h.strip()]
    unknown = [h for h in holdout if h not in DOMAINS]
    if unknown:
        raise ValueError(f'--holdout names {unknown} are not demo images {sorted(DOMAINS)}')
    imgs, disp = load_images()
    prepare_out(args.out)
    for name, img in imgs.items():
        atomic_imwrite(np.ascontiguousarray(img[..., ::-1]), osp.join(args.out, 'clean', name + '.png'))
    write_pfm(osp.join(args.out, 'depth', 'motorcycle.pfm'), disp)
    atomic_write_text('file,domain\n' + ''.join(f'{n}.png,{d}\n' for n, d in DOMAINS.items()),
                      osp.join(args.out, 'domains.csv'))

    spec = importlib.util.spec_from_file_location('make_haze_pairs', osp.join(REPO, 'scripts', 'make_haze_pairs.py'))
    mhp = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mhp)
    cal = MIDDLEBURY_MOTORCYCLE
    return mhp.main([
        '--input', osp.join(args.out, 'clean'), '--output', args.out, '--domain-csv', osp.join(args.out, 'domains.csv'),
        '--depth-dir', osp.join(args.out, 'depth'), '--depth-kind', 'disparity', '--focal', str(cal['focal']),
        '--baseline', str(cal['baseline']), '--doffs', str(cal['doffs']), '--versions', str(args.versions),
        '--test-versions', str(args.test_versions), '--test-names', ','.join(holdout), '--max-size',
        str(args.long_side), '--seed', str(args.seed)
    ])


if __name__ == '__main__':
    cv2.setNumThreads(1)
    main()
