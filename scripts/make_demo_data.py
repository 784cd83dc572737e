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

Every file written is recorded in ``OUT/.mixcl_outputs.jsonl`` (see mixcl_arch/utils/output_guard.py). A re-run
deletes only the recorded files (those of make_haze_pairs.py too) that are unchanged since, and rebuilds; any other
file is kept, and one inside the folders the dataset is built from (clean/, depth/, {train,test}/{hazy,GT}/) stops
the run. A non-empty ``OUT`` without that manifest is an error. Prints make_haze_pairs' JSON summary.

Report mode (used by scripts/demo.sh after inference)::

    python scripts/make_demo_data.py --out OUT --report DEHAZED_DIR --report-out REPORT_DIR

compares OUT/test/hazy/* and DEHAZED_DIR/* (same relative names, any image extension) with their GT from
OUT/test/meta.csv, prints a JSON with per-image and mean PSNR/SSIM (BasicSR's calculate_psnr/ssim on RGB uint8,
no border crop) of the hazy input and of the dehazed output, and writes REPORT_DIR/comparison.png (rows of
hazy | dehazed | GT, labelled) and REPORT_DIR/metrics.json.
"""
import argparse
import importlib.util
import os
import os.path as osp
import sys

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--out', default='demo_output/data', help='output folder (default demo_output/data)')
    p.add_argument('--long-side', type=int, default=256, help='long side of the dataset images (default 256)')
    p.add_argument('--versions', type=int, default=8, help='hazy versions per training image')
    p.add_argument('--test-versions', type=int, default=3, help='hazy versions per held-out image')
    p.add_argument('--holdout', default='chelsea', help='comma-separated names held out for validation')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--report', metavar='DEHAZED_DIR', default=None, help='report mode: folder of dehazed test images')
    p.add_argument('--report-out', default=None, help='report mode: where comparison.png and metrics.json go')
    p.add_argument('--standin-store', metavar='FILE', default=None,
                   help='only write FILE with the oracle stand-in per-domain vectors the dataset uses without a '
                   'feature store (for the inference CLI\'s --feature-store); NOT CLIP features')
    return p.parse_args(argv)


if __name__ == '__main__':
    parse_args()  # --help and usage errors answer here, before the imports below (torch and basicsr take seconds)

import cv2  # noqa: E402
import numpy as np  # noqa: E402

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, REPO)
from mixcl_arch.data.haze_synthesis import write_pfm  # noqa: E402
from mixcl_arch.utils.file_io import atomic_imwrite, atomic_write_text  # noqa: E402
from mixcl_arch.utils.image_io import IMG_EXTENSIONS, decode_image  # noqa: E402
from mixcl_arch.utils.output_guard import MANIFEST_NAME, OutputManifest, check_outputs_apart  # noqa: E402

TOOL = 'make_demo_data'
DATASET_FOLDERS = ('clean', 'depth', 'train/hazy', 'train/GT', 'test/hazy', 'test/GT')
DOMAINS = {'astronaut': 'indoor', 'coffee': 'indoor', 'chelsea': 'indoor', 'motorcycle': 'indoor', 'rocket': 'outdoor'}
MIDDLEBURY_MOTORCYCLE = {'focal': 994.978, 'baseline': 193.001, 'doffs': 31.086}


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
    """Delete the files an earlier run recorded in ``out`` and return the manifest to record the new ones in.

    Raises:
        FileExistsError: ``out`` is not empty and has no manifest, or files that are not ours sit in a folder the
            dataset is built from (nothing is deleted then).
    """
    if osp.isdir(out) and os.listdir(out) and not osp.isfile(osp.join(out, MANIFEST_NAME)):
        raise FileExistsError(f'{out} is not empty and was not made by make_demo_data.py (no {MANIFEST_NAME}; a folder '
                              'made by an older version must be deleted by hand): choose another --out')
    manifest = OutputManifest(out, TOOL)
    foreign = [f for sub in DATASET_FOLDERS for f in manifest.foreign_files(osp.join(out, sub))]
    if foreign:
        raise FileExistsError(f'{out}: {len(foreign)} file(s) not made by make_demo_data.py (or changed since) in the '
                              f'dataset folders, e.g. {foreign[:3]}; move them away (nothing was deleted).')
    manifest.remove_recorded(tools=(TOOL, 'make_haze_pairs'))
    return manifest


def _find_output(folder, hazy_rel):
    stem = osp.splitext(hazy_rel)[0]
    for ext in IMG_EXTENSIONS:
        if osp.isfile(osp.join(folder, stem + ext)):
            return osp.join(folder, stem + ext)
    raise FileNotFoundError(f'No dehazed output for {hazy_rel} in {folder} (expected {stem}.png or similar)')


def _label(img, text):
    out = img.copy()
    cv2.rectangle(out, (0, 0), (out.shape[1], 18), (0, 0, 0), -1)
    cv2.putText(out, text, (4, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def report(data_root, dehazed_dir, out_dir):
    """PSNR/SSIM of hazy and dehazed test images vs GT, and a labelled comparison image; returns the dict."""
    import csv
    import json

    from basicsr.metrics import calculate_psnr, calculate_ssim

    meta = osp.join(data_root, 'test', 'meta.csv')
    if not osp.isfile(meta):
        raise FileNotFoundError(f'{meta} not found: build the demo data first')
    with open(meta, newline='', encoding='utf-8') as f:
        rows = list(csv.DictReader(f))
    per_image, panels = [], []
    for row in rows:
        paths = {
            'hazy': osp.join(data_root, 'test', 'hazy', row['hazy']),
            'dehazed': _find_output(dehazed_dir, row['hazy']),
            'gt': osp.join(data_root, 'test', 'GT', row['gt'])
        }
        # 8-bit BGR, as BasicSR's calculate_psnr / calculate_ssim and the OpenCV drawing take them
        imgs = {k: (decode_image(v)[..., ::-1] * 255).round().astype(np.uint8) for k, v in paths.items()}
        if imgs['dehazed'].shape != imgs['gt'].shape:
            raise ValueError(f'{paths["dehazed"]} is {imgs["dehazed"].shape}, GT {paths["gt"]} is {imgs["gt"].shape}')
        rec = {'hazy': row['hazy'], 'beta': float(row['beta']), 'A': float(row['A'])}
        for k in ('hazy', 'dehazed'):
            rec[f'psnr_{k}'] = round(float(calculate_psnr(imgs[k], imgs['gt'], crop_border=0)), 3)
            rec[f'ssim_{k}'] = round(float(calculate_ssim(imgs[k], imgs['gt'], crop_border=0)), 4)
        per_image.append(rec)
        panels.append(np.hstack([
            _label(imgs['hazy'], f'hazy  {rec["psnr_hazy"]:.2f} dB  (beta {rec["beta"]:.2f}, A {rec["A"]:.2f})'),
            _label(imgs['dehazed'], f'dehazed  {rec["psnr_dehazed"]:.2f} dB'),
            _label(imgs['gt'], 'ground truth')
        ]))
    width = max(p.shape[1] for p in panels)
    grid = np.vstack([np.pad(p, ((0, 4), (0, width - p.shape[1]), (0, 0)), constant_values=255) for p in panels])
    mean = {k: round(float(np.mean([r[k] for r in per_image])), 4)
            for k in ('psnr_hazy', 'ssim_hazy', 'psnr_dehazed', 'ssim_dehazed')}
    check_outputs_apart([osp.join(out_dir, 'comparison.png'), osp.join(out_dir, 'metrics.json')],
                        [data_root, dehazed_dir], '--report-out file')
    result = {'images': len(per_image), 'mean': mean, 'per_image': per_image,
              'comparison': osp.abspath(osp.join(out_dir, 'comparison.png'))}
    atomic_imwrite(grid, osp.join(out_dir, 'comparison.png'))
    atomic_write_text(json.dumps(result, indent=2) + '\n', osp.join(out_dir, 'metrics.json'))
    print(json.dumps(result, indent=2))
    return result


def write_standin_store(path, domains=('indoor', 'outdoor')):
    """Save the dataset's oracle stand-in vectors as ``{'domain_text': {domain: (512,)}}`` (atomically).

    Raises:
        FileExistsError: ``path`` exists and is not a stand-in store this script wrote (recorded in the manifest
            of its folder).
    """
    from mixcl_arch.data.clip_data_util import standin_text_feature
    from mixcl_arch.utils.checkpoint import atomic_torch_save
    manifest = OutputManifest(osp.dirname(osp.abspath(path)), TOOL)
    if osp.exists(path) and not manifest.owns(path):
        raise FileExistsError(f'{path} exists and was not written by make_demo_data.py: choose another file.')
    feats = {d: standin_text_feature(d) for d in domains}
    atomic_torch_save({'domain_text': feats, 'domains': list(domains),
                       'note': 'oracle stand-in (seeded random unit vectors per domain), NOT CLIP features'}, path)
    manifest.record(path)
    return feats


def main(argv=None):
    args = parse_args(argv)
    if args.standin_store:
        return write_standin_store(args.standin_store)
    if args.report:
        return report(args.out, args.report, args.report_out or osp.dirname(osp.abspath(args.report)))
    holdout = [h.strip() for h in args.holdout.split(',') if h.strip()]
    unknown = [h for h in holdout if h not in DOMAINS]
    if unknown:
        raise ValueError(f'--holdout names {unknown} are not demo images {sorted(DOMAINS)}')
    imgs, disp = load_images()
    manifest = prepare_out(args.out)
    for name, img in imgs.items():
        path = osp.join(args.out, 'clean', name + '.png')
        atomic_imwrite(np.ascontiguousarray(img[..., ::-1]), path)
        manifest.record(path)
    path = osp.join(args.out, 'depth', 'motorcycle.pfm')
    write_pfm(path, disp)
    manifest.record(path)
    path = osp.join(args.out, 'domains.csv')
    atomic_write_text('file,domain\n' + ''.join(f'{n}.png,{d}\n' for n, d in DOMAINS.items()), path)
    manifest.record(path)

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
