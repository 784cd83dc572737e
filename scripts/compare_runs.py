#!/usr/bin/env python
"""Per-image comparison of two result sets, as the reference's compare.py: which images run A restores better or
worse than run B by more than ``--threshold`` (default 1, in the metric's unit: dB for PSNR).

Each side (``--a``, ``--b``) is either

* a per-image CSV:
  - ``<path.log>/<dataset>_per_image.csv`` of ``python -m mixcl_arch.test`` (header ``image,<metric>,...``);
  - ``results.csv`` of ``scripts/benchmark_quality.py`` (one row per image and method: pick the method with
    ``--method-a`` / ``--method-b`` when the file holds several);
  - the reference test.py's headerless ``name,psnr,ssim`` rows;
* or a folder of restored images; ``--gt DIR`` then gives the ground truth and the metric is computed here with the
  project's dehazing metrics (``calculate_psnr_dehaze`` / ``calculate_ssim_dehaze``: float RGB in [0, 1]).

Images are matched by name without extension (``--key stem``, default) or by relative path without extension
(``--key path``). Both sides must contain the metric (``--metric``, default psnr; higher is better); images on one
side only, or without a value, are counted and left out.

Prints a JSON summary (images compared, means, better / worse / same counts, the largest differences) and writes
``--out`` (a CSV: image, a, b, diff = a - b, verdict better | worse | same, sorted by diff, largest first).

Example::

    python scripts/compare_runs.py --a results/MixCL/test_SOTS_per_image.csv \\
        --b results/MixDehazeNet/test_SOTS_per_image.csv --out results/compare/mixcl_vs_mix.csv
    python scripts/compare_runs.py --a bench/results.csv --method-a DCP-lab --b bench/results.csv --method-b DCP \\
        --out results/compare/dcp_lab_vs_paper.csv
    python scripts/compare_runs.py --a out/mixcl --b out/dcp --gt datasets/SOTS/outdoor/GT --out cmp.csv
"""
import argparse
import csv
import io
import json
import math
import os
import os.path as osp
import sys

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

TOOL = 'compare-runs'
REFERENCE_COLUMNS = ('image', 'psnr', 'ssim')  # the reference test.py's headerless results.csv
KEYS = ('stem', 'path')


def match_key(name, key):
    """Matching key of an image name: its :func:`~mixcl_arch.utils.image_io.image_key` (relative path without
    extension, for 'path') or that key's last part (for 'stem'); Windows separators in CSVs are read as '/'."""
    full = image_key(name.replace('\\', '/'))
    return full.rpartition('/')[2] if key == 'stem' else full


def _unique(pairs, source, key):
    out = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f'{source}: two images share the key {k!r}' +
                             (' (same name in two folders); use --key path' if key == 'stem' else ''))
        out[k] = v
    return out


def _float(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def read_csv_values(path, metric, method=None, key='stem'):
    """{image key: metric value or None} from a per-image CSV (formats in the module docstring).

    Raises:
        ValueError: No such metric column, a benchmark file with several methods and no ``method``, an unknown
            method, or a repeated image.
    """
    with open(path, newline='', encoding='utf-8') as f:
        rows = [r for r in csv.reader(f) if r]
    if not rows:
        raise ValueError(f'{path}: empty CSV.')
    if len(rows[0]) > 1 and _float(rows[0][1]) is not None:  # headerless: the reference's name,psnr,ssim
        header = list(REFERENCE_COLUMNS[:len(rows[0])])
    else:
        header, rows = [c.strip() for c in rows[0]], rows[1:]
    if 'image' not in header or metric not in header:
        raise ValueError(f'{path}: needs columns image and {metric!r} (columns: {header}); set --metric.')
    records = [dict(zip(header, r)) for r in rows]
    if 'method' in header:
        methods = sorted({r['method'] for r in records})
        if method is None and len(methods) > 1:
            raise ValueError(f'{path} holds the methods {methods}: choose one with --method-a / --method-b.')
        method = method or (methods[0] if methods else None)
        if method not in methods:
            raise ValueError(f'{path}: no method {method!r} (methods: {methods}).')
        records = [r for r in records if r['method'] == method]
    elif method is not None:
        raise ValueError(f'{path} has no method column; --method-a / --method-b apply to benchmark results.csv.')
    return _unique(((match_key(r['image'], key), _float(r[metric])) for r in records), path, key)


def _scan(folder, key):
    pairs = [(match_key(rel, key), osp.join(folder, rel)) for rel in scan_images(folder, allow_empty=True)]
    return _unique(pairs, folder, key)


def folder_values(folder, gt_folder, metric, key='stem'):
    """{image key: metric of the folder's image against the GT image with the same key}; images without GT are
    left out (None)."""
    from mixcl_arch.metrics.dehaze_metric import calculate_psnr_dehaze, calculate_ssim_dehaze
    fn = {'psnr': calculate_psnr_dehaze, 'ssim': calculate_ssim_dehaze}.get(metric)
    if fn is None:
        raise ValueError(f'--metric {metric!r}: folders are scored with psnr or ssim.')
    gts = _scan(gt_folder, key)
    out = {}
    for k, path in _scan(folder, key).items():
        out[k] = fn(decode_image(path), decode_image(gts[k])) if k in gts else None
    return out


def load_side(src, gt, metric, method, key, flag):
    if osp.isdir(src):
        if not gt:
            raise ValueError(f'{flag} {src} is a folder of images: give --gt DIR to score it.')
        if method:
            raise ValueError(f'--method-{flag[-1]} applies to a benchmark results.csv, not to the folder {src}.')
        return folder_values(src, gt, metric, key)
    if not osp.isfile(src):
        raise FileNotFoundError(f'{flag}: no such file or folder: {src}')
    return read_csv_values(src, metric, method, key)


def compare(a, b, threshold=1.0):
    """Differences of two {image: value} maps.

    Args:
        a (dict[str, float | None]): Run A's values.
        b (dict[str, float | None]): Run B's values.
        threshold (float): A difference above it (A better) or below minus it (A worse) counts.

    Returns:
        tuple[list[dict], dict]: Rows (image, a, b, diff, verdict), sorted by diff, largest first; and counts of the
        images only in A, only in B, and without a value on a side.
    """
    common = sorted(set(a) & set(b))
    rows, no_value = [], 0
    for k in common:
        va, vb = a[k], b[k]
        if va is None or vb is None or math.isnan(va) or math.isnan(vb):
            no_value += 1
            continue
        diff = 0.0 if va == vb else va - vb  # two identical outputs (PSNR inf) differ by 0, not nan
        verdict = 'better' if diff > threshold else 'worse' if diff < -threshold else 'same'
        rows.append({'image': k, 'a': va, 'b': vb, 'diff': diff, 'verdict': verdict})
    rows.sort(key=lambda r: (-r['diff'], r['image']))
    return rows, {'only_a': len(set(a) - set(b)), 'only_b': len(set(b) - set(a)), 'no_value': no_value}


def summarize(rows, counts, args):
    def mean(vals):
        vals = [v for v in vals if math.isfinite(v)]
        return sum(vals) / len(vals) if vals else None

    verdicts = [r['verdict'] for r in rows]
    return {
        'a': args.a, 'b': args.b, 'method_a': args.method_a, 'method_b': args.method_b, 'gt': args.gt,
        'metric': args.metric, 'threshold': args.threshold, 'images': len(rows), **counts,
        'mean_a': mean(r['a'] for r in rows), 'mean_b': mean(r['b'] for r in rows),
        'mean_diff': mean(r['diff'] for r in rows),
        'better': verdicts.count('better'), 'worse': verdicts.count('worse'), 'same': verdicts.count('same'),
        'most_better': [[r['image'], round(r['diff'], 4)] for r in rows[:args.show] if r['verdict'] == 'better'],
        'most_worse': [[r['image'], round(r['diff'], 4)] for r in reversed(rows[max(0, len(rows) - args.show):])
                       if r['verdict'] == 'worse'],
        'out': args.out,
    }


def write_rows(rows, out, inputs):
    """The differences CSV, atomically; refuses to replace a file this tool did not write."""
    from mixcl_arch.utils.file_io import atomic_write_text
    check_outputs_apart([out], inputs, '--out')
    folder = osp.dirname(osp.abspath(out))
    manifest = OutputManifest(folder, TOOL)
    if osp.exists(out) and not manifest.owns(out):
        raise FileExistsError(f'{out} exists and was not written by {TOOL} (no record in {manifest.path}); choose '
                              'another --out or move it away.')
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator='\n')
    writer.writerow(['image', 'a', 'b', 'diff', 'verdict'])
    writer.writerows([[r['image'], f"{r['a']:.6f}", f"{r['b']:.6f}", f"{r['diff']:.6f}", r['verdict']] for r in rows])
    os.makedirs(folder, exist_ok=True)
    atomic_write_text(buf.getvalue(), out)
    manifest.record(out)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0], epilog=__doc__.split('\n', 2)[2],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--a', required=True, help='run A: per-image CSV or folder of restored images')
    p.add_argument('--b', required=True, help='run B: per-image CSV or folder of restored images')
    p.add_argument('--gt', help='ground-truth folder (needed when --a or --b is a folder)')
    p.add_argument('--method-a', help='method of --a when it is a benchmark results.csv with several')
    p.add_argument('--method-b', help='method of --b when it is a benchmark results.csv with several')
    p.add_argument('--metric', default='psnr', help='column / metric compared, higher is better (default psnr)')
    p.add_argument('--threshold', type=float, default=1.0, help='difference that counts (default 1, dB for PSNR)')
    p.add_argument('--key', choices=KEYS, default='stem', help='match images by name (stem) or relative path')
    p.add_argument('--out', required=True, help='CSV of the per-image differences')
    p.add_argument('--show', type=int, default=10, help='largest differences listed in the summary (default 10)')
    args = p.parse_args(argv)
    if args.threshold < 0 or args.show < 0:
        p.error('--threshold and --show must be >= 0')
    return args


if __name__ == '__main__':
    parse_args()  # --help and usage errors answer here, before the imports below (torch and basicsr take seconds)

import mixcl_arch  # noqa: E402,F401  (before basicsr)
from mixcl_arch.utils.image_io import decode_image, image_key, scan_images  # noqa: E402
from mixcl_arch.utils.output_guard import OutputManifest, check_outputs_apart  # noqa: E402


def main(argv=None):
    args = parse_args(argv)
    try:
        a = load_side(args.a, args.gt, args.metric, args.method_a, args.key, '--a')
        b = load_side(args.b, args.gt, args.metric, args.method_b, args.key, '--b')
        rows, counts = compare(a, b, args.threshold)
        if not rows:
            raise ValueError(f'No image has a {args.metric} value in both runs ({len(a)} in A, {len(b)} in B; '
                             f'matched by --key {args.key}).')
        write_rows(rows, args.out, [args.a, args.b, args.gt])
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 1
    print(json.dumps(summarize(rows, counts, args), indent=2))
    return 0


if __name__ == '__main__':
    sys.exit(main())
