#!/usr/bin/env python
"""Quality benchmark: PSNR / SSIM / time / params / MACs of several dehazing methods on one paired test set.

Data (``--data DIR``), either layout:

- folders ``DIR/hazy`` and ``DIR/GT``; pairs from ``DIR/meta.csv`` (columns ``hazy,gt[,domain,...]``, paths relative
  to hazy/ and GT/, as written by scripts/make_haze_pairs.py) or, without it, files with the same stem in both;
- LMDB ``DIR/hazy.lmdb`` and ``DIR/GT.lmdb`` (BasicSR format); pairs from ``DIR/meta.csv`` (keys = paths without
  extension) or by key.

Pairs are read through the registered dataset ``CLIPPairedImageDataset`` (phase test, no conditioning), so the
benchmark sees the pixels training and ``test.py`` see; a listed file that is missing or a hazy image without GT
stops the run before any method runs.

Methods (``--method``, repeatable, and/or ``--methods-yaml``), each ``name=LABEL,method=net|dcp|dehazenet|hazy``
plus ``weights=FILE``, ``opt=YAML`` and any option of :func:`mixcl_arch.restorers.build_restorer` /
the baseline (e.g. ``method=dcp,omega=0.9``: dcp / dehazenet read this text with their options' ``from_strings``,
other methods' values are parsed as YAML scalars). A methods YAML is a list (or
``{methods: [...]}``) of mappings with the same keys, options either inline or under ``params``.

Writes to ``--out``:

- ``results.csv``: one row per (image, method): image, gt, domain, method, psnr, ssim, time_ms, height, width;
- ``summary.csv`` and ``summary.md``: per method (and per domain when the pair CSV has a ``domain`` column): number
  of images, mean PSNR (dB) and SSIM under the dehazing protocol (``calculate_psnr_dehaze`` /
  ``calculate_ssim_dehaze``: float [0, 1] clamped, per image, SSIM after average-pooling by round(min(H, W)/256)),
  mean time per image (ms), parameters, and MACs of the network at 1x3x256x256 (``mixcl_arch.utils.flops``,
  FlopCounterMode: convs, matmuls and attention; the CLIP encoder of conditioned nets is not included);
- ``figure.png``: rows of hazy | each method | GT with labels (per-image PSNR / SSIM) for ``--figure`` images;
  with ``--figure-maps`` each DCP method is followed by its dark channel, transmission and depth heat map;
- with ``--save-images``: every output as ``images/<method>/<hazy path without extension>.png``.

Resumable: rows already in ``results.csv`` for an (image, method) are skipped (``--no-resume`` recomputes all);
every file is rewritten atomically. The time of a method is measured around its call (CUDA synchronised), after
one untimed warm-up call per method, so it excludes image loading and includes CLIP conditioning for conditioned
nets.

Safety: every file written is recorded in ``OUT/.mixcl_outputs.jsonl`` (see :mod:`mixcl_arch.utils.output_guard`);
an output this script did not write, or one changed since (a user's ``results.csv``, a figure edited by hand),
stops the run before anything is written, on a resumed run and with ``--no-resume`` alike. Images are decoded by
the dataset, with the pixel count checked from the header first (a decompression bomb is refused).

Example::

    python scripts/benchmark_quality.py --data demo_output/data/test --out demo_output/bench \\
        --method name=Hazy,method=hazy --method name=DCP,method=dcp \\
        --method name=AOD-Net,method=net,weights=experiments/AODNet_demo/models/net_g_latest.pth,\\
opt=options/test/test_AODNet_demo.yml
"""
import argparse
import csv
import hashlib
import io
import json
import math
import os
import os.path as osp
import random
import sys
import time

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--data', required=True, help='split folder: hazy/ + GT/ (+ meta.csv) or hazy.lmdb + GT.lmdb')
    p.add_argument('--meta', default=None, help='pair CSV (default DATA/meta.csv when present)')
    p.add_argument('--method', action='append', help='name=LABEL,method=net|dcp|dehazenet|hazy[,weights=..,opt=..,'
                   'key=value...] (repeatable)')
    p.add_argument('--methods-yaml', default=None, help='YAML list of methods (same keys)')
    p.add_argument('--out', required=True, help='output folder')
    p.add_argument('--device', default='cpu', help="'cpu', 'cuda', 'cuda:1' or 'auto' (default cpu)")
    p.add_argument('--max-images', type=int, default=None, help='only the first N pairs (sorted as listed)')
    p.add_argument('--figure', default='4', help="figure images: a count (random, --seed) or comma-separated hazy "
                   "names; '0' for no figure")
    p.add_argument('--figure-height', type=int, default=160, help='height of each figure cell in pixels')
    p.add_argument('--figure-maps', action='store_true', help='figure: after each method=dcp column, its dark '
                   'channel, transmission and depth heat map (the lab report\'s figure, see docs/baselines.md)')
    p.add_argument('--macs-size', type=int, default=256, help='square input size for MACs (default 256)')
    p.add_argument('--no-resume', action='store_true', help='ignore existing results.csv rows and recompute (its '
                   'own results.csv only: a file it did not write is never replaced)')
    p.add_argument('--flush-every', type=int, default=20, help='rewrite results.csv every N new rows')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--threads', type=int, default=None, help='torch CPU threads (default: torch default)')
    p.add_argument('--save-images', action='store_true', help='also write every output to OUT/images/METHOD/')
    p.add_argument('--quiet', action='store_true', help='no progress bar')
    return p.parse_args(argv)


if __name__ == '__main__':
    parse_args()  # --help and usage errors answer here, before the imports below (torch and basicsr take seconds)

import cv2  # noqa: E402
import numpy as np  # noqa: E402

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)
import mixcl_arch  # noqa: E402,F401  (patches basicsr before anything imports it)
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from mixcl_arch.baselines.dcp import MAP_NAMES, dcp_maps  # noqa: E402
from mixcl_arch.metrics.dehaze_metric import calculate_psnr_dehaze, calculate_ssim_dehaze  # noqa: E402
from mixcl_arch.utils.flops import count_macs, format_count  # noqa: E402
from mixcl_arch.data.clip_data_util import read_pair_csv  # noqa: E402
from mixcl_arch.data.clip_paired_image_dataset import CLIPPairedImageDataset  # noqa: E402
from mixcl_arch.utils.file_io import atomic_imwrite, atomic_write_text  # noqa: E402
from mixcl_arch.utils.image_io import image_key  # noqa: E402
from mixcl_arch.utils.options import load_yaml_file, safe_load  # noqa: E402
from mixcl_arch.utils.output_guard import OutputManifest, check_outputs_apart  # noqa: E402

TOOL = 'benchmark_quality'

RESULT_FIELDS = ['image', 'gt', 'domain', 'method', 'psnr', 'ssim', 'time_ms', 'height', 'width', 'config']
SUMMARY_FIELDS = ['method', 'domain', 'images', 'psnr', 'ssim', 'time_ms', 'params', 'macs_256']
SPEC_KEYS = ('name', 'method', 'weights', 'opt')


# ---------------------------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------------------------
def open_pairs(root, meta=None):
    """The test split ``root`` read through the registered ``CLIPPairedImageDataset`` (phase test, no conditioning).

    Args:
        root (str): Split folder with hazy/ + GT/ or hazy.lmdb + GT.lmdb.
        meta (str | None): Pair CSV (``hazy,gt[,domain]``); default ROOT/meta.csv when it exists. Without one the
            hazy and GT images are paired by name (the dataset's ``gt_name_rule: identity``).

    Returns:
        tuple[CLIPPairedImageDataset, list[dict]]: The dataset and one item per pair, in its order: 'index' (into
        the dataset), 'image' (hazy path as listed: CSV path, relative path on disk or LMDB key), 'gt', 'domain'
        ('' if none).

    Raises:
        FileNotFoundError: Missing folders or CSV.
        ValueError: A CSV without hazy/gt columns, listed files that do not exist, hazy images without GT (checked
            by the dataset before anything runs; sizes and pixels are checked when a pair is read).
    """
    if not osp.isdir(root):
        raise FileNotFoundError(f'--data folder not found: {root}')
    for backend, ext in (('disk', ''), ('lmdb', '.lmdb')):
        lq, gt = osp.join(root, 'hazy' + ext), osp.join(root, 'GT' + ext)
        if osp.isdir(lq) and osp.isdir(gt):
            break
    else:
        raise FileNotFoundError(f'{root}: expected hazy/ and GT/ folders or hazy.lmdb and GT.lmdb.')
    meta = meta or (osp.join(root, 'meta.csv') if osp.isfile(osp.join(root, 'meta.csv')) else None)
    if meta is not None and not osp.isfile(meta):
        raise FileNotFoundError(f'Pair CSV not found: {meta}')
    # images are checked when read, by the decoder (a decompression bomb is refused naming its size and the limit)
    opt = {'name': osp.basename(osp.normpath(root)), 'phase': 'test', 'dataroot_lq': lq, 'dataroot_gt': gt,
           'io_backend': {'type': backend}, 'meta_file': meta, 'check_images': False}
    dataset = CLIPPairedImageDataset(opt)
    if meta:  # the dataset keeps every CSV row, in order; names and domains as the CSV spells them
        rows = read_pair_csv(meta)
        items = [{'image': r['hazy'], 'gt': r['gt'], 'domain': (r.get('domain') or '').strip()} for r in rows]
    else:
        items = [{'image': lq_name, 'gt': gt_name, 'domain': ''} for lq_name, gt_name in dataset.pairs]
    if len(items) != len(dataset):
        raise ValueError(f'{meta}: {len(items)} rows but {len(dataset)} pairs read.')
    for index, item in enumerate(items):
        item['index'] = index
    return dataset, items


def _hwc(tensor):
    """(3, H, W) tensor -> (H, W, 3) float32 array."""
    return tensor.numpy().transpose(1, 2, 0)


# ---------------------------------------------------------------------------------------------------------------
# methods
# ---------------------------------------------------------------------------------------------------------------
def parse_method_spec(spec):
    """'name=DCP,method=dcp,omega=0.9' -> {'name': 'DCP', 'method': 'dcp', 'params': {'omega': '0.9'}, 'text': True}.

    The options of dcp / dehazenet stay ``KEY=VALUE`` text, read by the baseline's options dataclass; those of the
    other methods are parsed as YAML scalars.

    Raises:
        ValueError: A part without '=', or no method.
    """
    from mixcl_arch.restorers import LAZY_BASELINES
    out = {'params': {}}
    for part in [p for p in spec.split(',') if p.strip()]:
        if '=' not in part:
            raise ValueError(f'Method spec {spec!r}: expected key=value parts, got {part!r}.')
        key, value = (s.strip() for s in part.split('=', 1))
        if key in SPEC_KEYS:
            out[key] = value
        else:
            out['params'][key] = value
    text = out.get('method') in LAZY_BASELINES
    if not text:
        out['params'] = {k: safe_load(v) if v else None for k, v in out['params'].items()}
    return normalize_method(out, spec, text)


def normalize_method(entry, where, text=False):
    """Check a method mapping and fill its defaults (name = method); ``text``: its params are ``KEY=VALUE`` text."""
    if not isinstance(entry, dict) or not entry.get('method'):
        raise ValueError(f'Method {where!r}: needs method=net|dcp|dehazenet|hazy.')
    from mixcl_arch.methods import METHODS
    if entry['method'] not in METHODS:
        raise ValueError(f"Method {where!r}: unknown method {entry['method']!r}; expected one of {METHODS}.")
    params = dict(entry.get('params') or {})
    params.update({k: v for k, v in entry.items() if k not in SPEC_KEYS + ('params', )})
    name = str(entry.get('name') or entry['method'])
    if ',' in name or '\n' in name:
        raise ValueError(f'Method name {name!r} must not contain commas or newlines.')
    for key in ('weights', 'opt'):
        path = entry.get(key)
        if path and not osp.isfile(str(path)):
            raise FileNotFoundError(f'Method {name!r}: {key} file not found: {path}')
    if entry['method'] in ('net', 'dehazenet') and not entry.get('weights') and not entry.get('opt'):
        raise ValueError(f"Method {name!r}: method={entry['method']} needs weights=FILE (or opt=YAML with "
                         'path.pretrain_network_g).')
    return {'name': name, 'method': entry['method'], 'weights': entry.get('weights'), 'opt': entry.get('opt'),
            'params': params, 'text': text}


def load_methods(args):
    methods = []
    if args.methods_yaml:
        data = load_yaml_file(args.methods_yaml)
        if isinstance(data, dict):
            data = data.get('methods')
        if not isinstance(data, list):
            raise ValueError(f'{args.methods_yaml}: expected a list of methods (or a mapping with key methods).')
        methods += [normalize_method(e, f'{args.methods_yaml}[{i}]') for i, e in enumerate(data)]
    methods += [parse_method_spec(s) for s in args.method or []]
    if not methods:
        raise ValueError('No methods: give --method name=...,method=... (repeatable) or --methods-yaml.')
    names = [m['name'] for m in methods]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f'Duplicate method names {dup}: give each a distinct name=.')
    return methods


def build(method, device):
    from mixcl_arch.restorers import build_restorer
    text = method['params'] if method['text'] else None
    return build_restorer(method['method'], weights=method['weights'], opt=method['opt'], device=device,
                          param_text=text, **({} if method['text'] else method['params']))


def model_cost(restorer, macs_size):
    """(params, MACs at 1x3xSxS or None) of a restorer."""
    params = int(getattr(restorer, 'num_params', 0) or 0)
    net = getattr(restorer, 'net', None)
    if net is None:
        return params, (0 if getattr(restorer, 'name', '') == 'hazy' else None)
    try:
        macs = count_macs(net, (1, 3, macs_size, macs_size))
    except Exception as err:  # a net with an unusual forward: report n/a rather than abort the benchmark
        tqdm.write(f'MACs not counted for {restorer.name}: {err}')
        macs = None
    return params, macs


def _sync(device):
    if torch.device(device).type == 'cuda':
        torch.cuda.synchronize()


# ---------------------------------------------------------------------------------------------------------------
# outputs
def method_config(m, device):
    """Short hash of everything that decides a method's rows: method, parameters, device, and the weights / options
    files (path, size, mtime). A resumed run reuses rows only for an unchanged configuration."""
    def file_id(path):
        if not path:
            return None
        st = os.stat(path)
        return [osp.abspath(path), st.st_size, int(st.st_mtime)]

    blob = json.dumps([m['method'], file_id(m['weights']), file_id(m['opt']), sorted(m['params'].items()), str(device)],
                      default=str, sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


# ---------------------------------------------------------------------------------------------------------------
def read_results(path):
    if not osp.isfile(path):
        return []
    with open(path, newline='', encoding='utf-8') as f:
        rows = list(csv.DictReader(f))
    if rows and set(RESULT_FIELDS) - {'config'} - set(rows[0]):
        raise ValueError(f'{path}: not a results file of this script (columns {list(rows[0])}); use another --out '
                         'or --no-resume.')
    return rows


def write_csv(rows, fields, path, manifest=None):
    """Write a CSV atomically and record it as this script's own in ``manifest`` (default: its folder's)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator='\n')
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row.get(k, '') for k in fields})
    atomic_write_text(buf.getvalue(), path)
    (manifest or OutputManifest(osp.dirname(osp.abspath(path)), TOOL)).record(path)


def check_own(manifest, paths):
    """Refuse, before anything is written, to replace an existing file that is not this script's own output.

    Raises:
        FileExistsError: Some of ``paths`` exist without a matching record in ``manifest`` (a user's file, another
            tool's, or one changed since it was written).
    """
    foreign = [p for p in paths if osp.lexists(p) and not manifest.owns(p)]
    if foreign:
        raise FileExistsError(f'{len(foreign)} file(s) in {manifest.root} were not written by {TOOL} (no record in '
                              f'{manifest.path}, or changed since), e.g. {foreign[:3]}; they are never replaced, '
                              'neither on a resumed run nor with --no-resume: move them away or choose another --out '
                              '(nothing was written).')


def image_path(out, method, item):
    """``--save-images`` file of one method's output for one pair."""
    return osp.join(out, 'images', method['name'], image_key(item['image']) + '.png')


def summarize(rows, methods, costs):
    """Summary rows: per method over all images, then per domain when domains are known."""
    out = []
    for m in methods:
        mine = [r for r in rows if r['method'] == m['name']]
        groups = [('all', mine)]
        domains = sorted({r['domain'] for r in mine if r['domain']})
        groups += [(d, [r for r in mine if r['domain'] == d]) for d in domains]
        params, macs = costs.get(m['name'], (None, None))
        for domain, rs in groups:
            if not rs:
                continue
            out.append({
                'method': m['name'], 'domain': domain, 'images': len(rs),
                'psnr': _mean(rs, 'psnr'), 'ssim': _mean(rs, 'ssim'), 'time_ms': _mean(rs, 'time_ms'),
                'params': '' if params is None else params, 'macs_256': '' if macs is None else macs})
    return out


def _mean(rows, key):
    vals = [float(r[key]) for r in rows if r[key] not in ('', None)]
    finite = [v for v in vals if math.isfinite(v)]
    if not vals:
        return ''
    return float(np.mean(finite)) if len(finite) == len(vals) else float('inf')


def summary_markdown(summary, data_root, n_images):
    lines = [f'Test set: `{data_root}` ({n_images} images). PSNR/SSIM: dehazing protocol (float RGB in [0, 1], '
             'SSIM after average-pooling by round(min(H,W)/256)); time: mean ms per image; MACs: network at '
             '1x3x256x256.', '',
             '| Method | Domain | Images | PSNR (dB) | SSIM | Time (ms) | Params | MACs (256²) |',
             '|---|---|---:|---:|---:|---:|---:|---:|']
    for s in summary:
        params = format_count(s['params']) if s['params'] != '' else '-'
        macs = format_count(s['macs_256']) if s['macs_256'] != '' else '-'
        lines.append(f"| {s['method']} | {s['domain']} | {s['images']} | {s['psnr']:.2f} | {s['ssim']:.4f} | "
                     f"{s['time_ms']:.1f} | {params} | {macs} |")
    return '\n'.join(lines) + '\n'


def _fmt_summary_csv(summary):
    out = []
    for s in summary:
        row = dict(s)
        for key, fmt in (('psnr', '{:.4f}'), ('ssim', '{:.6f}'), ('time_ms', '{:.3f}')):
            row[key] = fmt.format(row[key]) if row[key] != '' else ''
        out.append(row)
    return out


def _to_u8(img01):
    return (np.clip(img01, 0, 1) * 255 + 0.5).astype(np.uint8)


def _cell(rgb01, height, label, sub=''):
    """Resize to ``height`` and put a label bar above: returns (H + bar, W, 3) uint8 RGB."""
    h, w = rgb01.shape[:2]
    width = max(1, int(round(w * height / h)))
    img = cv2.resize(_to_u8(rgb01), (width, height), interpolation=cv2.INTER_AREA)
    bar = np.full((36, width, 3), 255, np.uint8)
    scale = 0.45
    for i, text in enumerate([label, sub]):
        if text:
            (tw, _), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
            s = scale * min(1.0, (width - 4) / max(tw, 1))
            cv2.putText(bar, text, (2, 14 + 17 * i), cv2.FONT_HERSHEY_SIMPLEX, s, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([bar, img], 0)


def make_figure(cells, fig_items, methods, rows_by_key, height, path):
    """Grid with one row per image: hazy | methods... | GT, labelled with per-image PSNR / SSIM."""
    grid_rows = []
    for it in fig_items:
        key = it['image']
        hazy, gt = cells[(key, '__hazy__')], cells[(key, '__gt__')]
        row = [_cell(hazy, height, f'hazy: {osp.basename(key)}')]
        for m in methods:
            r = rows_by_key.get((key, m['name']))
            sub = f"{float(r['psnr']):.2f} dB / {float(r['ssim']):.3f}" if r else ''
            row.append(_cell(cells[(key, m['name'])], height, m['name'], sub))
            row += [_cell(cells[(key, m['name'], name)], height, f"{m['name']}: {name}")
                    for name in MAP_NAMES if (key, m['name'], name) in cells]  # --figure-maps
        row.append(_cell(gt, height, 'GT'))
        gap = np.full((row[0].shape[0], 4, 3), 255, np.uint8)
        parts = []
        for c in row:
            parts += [c, gap]
        grid_rows.append(np.concatenate(parts[:-1], 1))
    width = max(r.shape[1] for r in grid_rows)
    padded = [np.pad(r, ((0, 6), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in grid_rows]
    atomic_imwrite(np.concatenate(padded, 0)[..., ::-1], path)


# ---------------------------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------------------------

def pick_figure_items(items, spec, seed):
    spec = str(spec).strip()
    if spec.isdigit():
        n = min(int(spec), len(items))
        rng = random.Random(seed)
        return sorted(rng.sample(items, n), key=lambda it: it['image']) if n else []
    wanted = [s.strip() for s in spec.split(',') if s.strip()]
    by_name = {}
    for it in items:
        by_name.setdefault(it['image'], it)
        by_name.setdefault(osp.basename(it['image']), it)
        by_name.setdefault(image_key(it['image']).rpartition('/')[2], it)
    missing = [w for w in wanted if w not in by_name]
    if missing:
        raise ValueError(f'--figure: image(s) {missing} not in the test set.')
    return [by_name[w] for w in wanted]


def run(args):
    if args.threads:
        torch.set_num_threads(args.threads)
    methods = load_methods(args)
    data, all_items = open_pairs(args.data, args.meta)
    inputs = [args.data, args.meta, args.methods_yaml] + [m[k] for m in methods for k in ('weights', 'opt')]
    check_outputs_apart([args.out], inputs, '--out')
    items = all_items[:args.max_images] if args.max_images else all_items
    fig_items = pick_figure_items(items, args.figure, args.seed)
    fig_keys = {it['image'] for it in fig_items}
    os.makedirs(args.out, exist_ok=True)
    manifest = OutputManifest(args.out, TOOL)
    results_path = osp.join(args.out, 'results.csv')
    paths = {name: osp.join(args.out, name) for name in ('summary.csv', 'summary.md', 'figure.png')}
    check_own(manifest, [results_path, paths['summary.csv'], paths['summary.md']]
              + ([paths['figure.png']] if fig_items else []))
    rows = [] if args.no_resume else read_results(results_path)
    configs = {m['name']: method_config(m, args.device) for m in methods}
    # rows of a method whose configuration changed (other weights, options, parameters, device) are recomputed
    rows = [r for r in rows if r['method'] not in configs or r.get('config') == configs[r['method']]]
    done = {(r['image'], r['method']) for r in rows}
    if args.save_images:
        check_own(manifest, [image_path(args.out, m, it) for m in methods for it in items
                             if (it['image'], m['name']) not in done])
    cells, costs, pending = {}, {}, 0

    def flush():
        write_csv(rows, RESULT_FIELDS, results_path, manifest)

    try:
        for m in methods:
            todo = [it for it in items if (it['image'], m['name']) not in done or it['image'] in fig_keys]
            restorer = build(m, args.device)
            costs[m['name']] = model_cost(restorer, args.macs_size)
            dev = getattr(restorer, 'device', None) or args.device
            dev = 'cpu' if str(dev) == 'auto' else dev
            warm = False
            bar = tqdm(todo, desc=m['name'], disable=args.quiet or not todo, dynamic_ncols=True)
            for it in bar:
                sample = data[it['index']]
                hazy, gt = _hwc(sample['lq']), _hwc(sample['gt'])
                x = sample['lq'].unsqueeze(0).to(dev)
                if not warm:
                    restorer(x)
                    warm = True
                _sync(dev)
                t0 = time.perf_counter()
                y = restorer(x)
                _sync(dev)
                ms = (time.perf_counter() - t0) * 1000
                y = y.detach().float().clamp(0, 1).cpu()
                if y.shape != x.shape:
                    raise ValueError(f"{m['name']}: output shape {tuple(y.shape)} != input {tuple(x.shape)} for "
                                     f"{it['image']}")
                if it['image'] in fig_keys:
                    cells[(it['image'], m['name'])] = y[0].numpy().transpose(1, 2, 0)
                    cells[(it['image'], '__hazy__')] = hazy
                    cells[(it['image'], '__gt__')] = gt
                    if args.figure_maps and m['method'] == 'dcp':
                        maps = dcp_maps(restorer.estimate(x))
                        cells.update({(it['image'], m['name'], name): maps[name] for name in MAP_NAMES})
                if (it['image'], m['name']) in done:
                    continue
                if args.save_images:
                    path = image_path(args.out, m, it)
                    atomic_imwrite(_to_u8(y[0].numpy().transpose(1, 2, 0))[..., ::-1], path)
                    manifest.record(path)
                g = sample['gt'].unsqueeze(0)
                rows.append({'image': it['image'], 'gt': it['gt'], 'domain': it['domain'], 'method': m['name'],
                             'psnr': f'{calculate_psnr_dehaze(y, g):.4f}', 'ssim': f'{calculate_ssim_dehaze(y, g):.6f}',
                             'time_ms': f'{ms:.3f}', 'height': hazy.shape[0], 'width': hazy.shape[1],
                             'config': configs[m['name']]})
                done.add((it['image'], m['name']))
                pending += 1
                if pending >= args.flush_every:
                    flush()
                    pending = 0
            del restorer
    finally:
        flush()

    keys = {it['image'] for it in items}
    current = [r for r in rows if r['image'] in keys]
    summary = summarize(current, methods, costs)
    write_csv(_fmt_summary_csv(summary), SUMMARY_FIELDS, paths['summary.csv'], manifest)
    md = summary_markdown(summary, args.data, len(items))
    atomic_write_text(md, paths['summary.md'])
    manifest.record(paths['summary.md'])
    fig_path = None
    if fig_items:
        fig_path = paths['figure.png']
        rows_by_key = {(r['image'], r['method']): r for r in current}
        make_figure(cells, fig_items, methods, rows_by_key, args.figure_height, fig_path)
        manifest.record(fig_path)
    return {'results': results_path, 'summary_csv': paths['summary.csv'],
            'summary_md': paths['summary.md'], 'figure': fig_path, 'images': len(items),
            'rows': len(current), 'summary': summary, 'markdown': md}


def main(argv=None):
    args = parse_args(argv)
    out = run(args)
    print(out['markdown'])
    print(json.dumps({k: v for k, v in out.items() if k != 'markdown'}, indent=2))


if __name__ == '__main__':
    main()
