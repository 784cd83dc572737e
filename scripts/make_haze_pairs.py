#!/usr/bin/env python
"""Turn a folder of clear images into hazy/clear pairs in the DehazeFormer layout.

Model: I = J * t + A * (1 - t), t = exp(-beta * d)  (see mixcl_arch/data/haze_synthesis.py for the conventions).

Output::

    ROOT/train/GT/<rel>/<stem>.png                       clear image (resized if --max-size)
    ROOT/train/hazy/<rel>/<stem>_<k>_<A>_<beta>.png      k-th hazy version
    ROOT/train/meta.csv                                  hazy,gt,domain,beta,A,depth_source
    ROOT/train/GT_paired/<stem>_<k>_<A>_<beta>.png       --basicsr-layout: the GT again under each hazy name
    ROOT/test/...                                        held-out images (never shared with train)

Depth: from ``--depth-dir`` (a file named like the image's relative path with extension .npy, .png or .pfm) when
present, else a pseudo-depth (vertical prior + smoothed dark channel, see haze_synthesis.pseudo_depth). beta and A
are drawn per domain from RESIDE-like ranges (indoor: ITS, outdoor: OTS); every image has its own random stream
derived from --seed and its relative path, so runs are reproducible and adding images does not change the others.

Example::

    python scripts/make_haze_pairs.py --input ../shared/photos --output datasets/photos_haze \
        --domain-csv ../shared/photos/MANIFEST.csv --versions 4 --test-frac 0.1 --max-size 512 --seed 0

Safety: the folders written (ROOT/train, ROOT/test) may not equal, contain or sit inside an input (--input,
--depth-dir, --domain-csv); every file written is recorded in ROOT/.mixcl_outputs.jsonl, and ``--overwrite`` deletes
only recorded files that are unchanged since. A file in ROOT/{train,test}/{hazy,GT,GT_paired} that this script did
not write stops the run before anything is written.

BasicSR layout (``--basicsr-layout``, both modes): several hazy versions share one GT, which BasicSR's own
``PairedImageDataset`` cannot pair (it pairs equal file names). SPLIT/GT_paired holds the GT once per hazy image,
under the hazy image's name, as a hard link (a copy where the file system has none), so that it reads::

    type: PairedImageDataset
    dataroot_lq: ROOT/train/hazy
    dataroot_gt: ROOT/train/GT_paired
    filename_tmpl: '{}'

Index mode (an existing hazy/GT split such as ITS, OTS or SOTS, nothing synthesised): writes SPLIT/meta.csv with the
GT of each hazy image found by name: the same relative path (DehazeFormer layout) or, failing that, the hazy stem up
to its first underscore (ITS ``1_1_0.90179.png`` -> ``1.png``, OTS/SOTS ``0025_0.8_0.1.jpg`` -> ``0025.*``)::

    python scripts/make_haze_pairs.py --index-existing datasets/ITS/train --domain indoor

The meta.csv it writes is recorded in SPLIT/.mixcl_outputs.jsonl; a meta.csv it did not write (the pair list a
dataset ships with) is never replaced, even with ``--overwrite``.
"""
import argparse
import csv
import io
import json
import os
import os.path as osp
import secrets
import shutil
import sys
import time

TOOL = 'make_haze_pairs'
SPLITS = ('train', 'test')
# the keys of mixcl_arch.data.haze_synthesis.DOMAIN_PRESETS, spelled out so that --help needs no torch
# (tests/test_polish.py checks that they agree)
DOMAINS = ('indoor', 'outdoor')
PAIRED_GT = 'GT_paired'  # --basicsr-layout: one GT link per hazy image, under the hazy image's name

META_COLUMNS = ('hazy', 'gt', 'domain', 'beta', 'A', 'depth_source')
DEPTH_EXTENSIONS = ('.npy', '.png', '.pfm')


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--input', help='folder of clear images (searched recursively)')
    p.add_argument('--output', help='dataset root; writes ROOT/{train,test}/{hazy,GT} + meta.csv')
    p.add_argument('--index-existing', metavar='SPLIT', default=None,
                   help='only write SPLIT/meta.csv for existing SPLIT/{hazy,GT} pairs (see above)')
    p.add_argument('--domain', choices=DOMAINS, default=None,
                   help='domain of every image (or the fallback for images missing from --domain-csv)')
    p.add_argument('--domain-csv', default=None, help='CSV with a file column and a domain column')
    p.add_argument('--csv-file-col', default='file', help='file column of --domain-csv (default: file)')
    p.add_argument('--csv-domain-col', default='domain', help='domain column of --domain-csv (default: domain)')
    p.add_argument('--depth-dir', default=None, help='per-image depth/disparity files: <rel path stem>.{npy,png,pfm}')
    p.add_argument('--depth-kind', choices=('depth', 'disparity'), default='depth')
    p.add_argument('--png-scale', type=float, default=1000.0, help='16-bit PNG depth divisor (default 1000)')
    p.add_argument('--focal', type=float, default=None, help='focal length in px (disparity files)')
    p.add_argument('--baseline', type=float, default=None, help='stereo baseline (disparity files)')
    p.add_argument('--doffs', type=float, default=0.0, help='principal point x offset in px (disparity files)')
    p.add_argument('--require-depth', action='store_true', help='error instead of pseudo-depth when no depth file')
    p.add_argument('--depth-norm', choices=('max', 'none'), default='max',
                   help="'max': depth/max*depth_scale (default); 'none': metric depth*depth_scale")
    p.add_argument('--depth-scale', type=float, default=None, help='override the per-domain depth scale')
    p.add_argument('--beta', type=float, nargs=2, default=None, metavar=('LO', 'HI'), help='override beta range')
    p.add_argument('--A', type=float, nargs=2, default=None, metavar=('LO', 'HI'), help='override A range')
    p.add_argument('--versions', type=int, default=3, help='hazy versions per training image')
    p.add_argument('--test-versions', type=int, default=None, help='hazy versions per test image (default: same)')
    p.add_argument('--test-frac', type=float, default=0.0, help='fraction of images held out for test')
    p.add_argument('--test-count', type=int, default=None, help='number of images held out (overrides frac)')
    p.add_argument('--test-names', default=None,
                   help='comma-separated stems or relative paths held out (overrides frac/count)')
    p.add_argument('--max-size', type=int, default=0, help='resize so the long side is at most this (0: keep)')
    p.add_argument('--hazy-ext', choices=('.png', '.jpg'), default='.png')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--overwrite', action='store_true',
                   help='replace an earlier run in ROOT: its recorded files are deleted first (never anything else)')
    p.add_argument('--basicsr-layout', action='store_true',
                   help=f'also write SPLIT/{PAIRED_GT}/<hazy name>: the GT of each hazy image under its name (hard '
                        'links, else copies), so that BasicSR\'s PairedImageDataset (filename_tmpl "{}") reads '
                        f'dataroot_lq: SPLIT/hazy, dataroot_gt: SPLIT/{PAIRED_GT}')
    args = p.parse_args(argv)
    if args.index_existing is None and (args.input is None or args.output is None):
        p.error('--input and --output are required (unless --index-existing)')
    if args.versions < 1:
        p.error('--versions must be >= 1')
    if args.test_versions is None:
        args.test_versions = args.versions
    if not 0.0 <= args.test_frac < 1.0:
        p.error('--test-frac must be in [0, 1)')
    if args.basicsr_layout and args.hazy_ext != '.png':
        p.error('--basicsr-layout needs --hazy-ext .png: BasicSR pairs file names with their extension, and the GT '
                'is PNG')
    return args


if __name__ == '__main__':
    parse_args()  # --help and usage errors answer here, before the imports below (torch and basicsr take seconds)

import cv2  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
from mixcl_arch.utils.file_io import atomic_imwrite, atomic_open, atomic_write_text  # noqa: E402
from mixcl_arch.data.clip_data_util import index_unique  # noqa: E402
from mixcl_arch.data.haze_synthesis import (DOMAIN_PRESETS, clear_stem, fill_invalid_depth,  # noqa: E402
                                            haze_depth, haze_name, image_rng, load_depth_file, pseudo_depth,
                                            sample_haze_params, synthesize_haze)
from mixcl_arch.utils.image_io import decode_image, image_key, scan_images  # noqa: E402
from mixcl_arch.utils.output_guard import OutputManifest, check_outputs_apart  # noqa: E402


def list_images(folder):
    """Sorted '/'-separated relative paths of the images under ``folder``.

    Raises:
        ValueError: No images, or two images with one stem (``a.png`` and ``a.jpg`` would write the same outputs).
    """
    rels = scan_images(folder)
    index_unique([(image_key(rel), rel) for rel in rels], folder)
    return rels


def resolve_domains(rels, args):
    """Domain per relative path from --domain-csv (matched by relative path, then basename) and --domain."""
    table = {}
    if args.domain_csv:
        if not osp.isfile(args.domain_csv):
            raise FileNotFoundError(f'Domain CSV not found: {args.domain_csv}')
        with open(args.domain_csv, newline='', encoding='utf-8-sig') as f:  # -sig: spreadsheets write a BOM
            reader = csv.DictReader(f)
            for col in (args.csv_file_col, args.csv_domain_col):
                if col not in (reader.fieldnames or []):
                    raise ValueError(f'{args.domain_csv}: column {col!r} missing (columns: {reader.fieldnames})')
            for row in reader:
                table[row[args.csv_file_col].strip().replace('\\', '/')] = row[args.csv_domain_col].strip()
    domains, missing = {}, []
    for rel in rels:
        dom = table.get(rel, table.get(osp.basename(rel), args.domain))
        if dom is None:
            missing.append(rel)
            continue
        if dom not in DOMAIN_PRESETS:
            raise ValueError(f'{rel}: unknown domain {dom!r} (from {args.domain_csv or "--domain"}); '
                             f'known: {sorted(DOMAIN_PRESETS)}')
        domains[rel] = dom
    if missing:
        raise ValueError(f'No domain for {len(missing)} image(s), e.g. {missing[:3]}: list them in --domain-csv '
                         'or pass --domain indoor|outdoor as the fallback')
    return domains


def resolve_depth_files(rels, args):
    """Depth file per relative path (or None) from --depth-dir."""
    out = {}
    for rel in rels:
        out[rel] = None
        if not args.depth_dir:
            continue
        stem = osp.splitext(rel)[0]
        for ext in DEPTH_EXTENSIONS:
            cand = osp.join(args.depth_dir, stem + ext)
            if osp.isfile(cand):
                out[rel] = cand
                break
    if args.depth_dir and not osp.isdir(args.depth_dir):
        raise FileNotFoundError(f'Depth folder not found: {args.depth_dir}')
    if args.require_depth:
        lacking = [r for r, d in out.items() if d is None]
        if lacking:
            raise FileNotFoundError(f'--require-depth: no depth file in {args.depth_dir} for {lacking[:3]} '
                                    f'({len(lacking)} image(s); expected <stem>{{{",".join(DEPTH_EXTENSIONS)}}})')
    if args.depth_kind == 'disparity' and any(out.values()) and (args.focal is None or args.baseline is None):
        raise ValueError('--depth-kind disparity needs --focal and --baseline')
    return out


def split_images(rels, args):
    """Deterministic train/test split by image (all hazy versions of an image stay in one split)."""
    if args.test_names:
        wanted = [n.strip() for n in args.test_names.split(',') if n.strip()]
        keys = {r: {r, osp.splitext(r)[0], osp.basename(r), osp.splitext(osp.basename(r))[0]} for r in rels}
        test = [r for r in rels if keys[r] & set(wanted)]
        unknown = [w for w in wanted if not any(w in k for k in keys.values())]
        if unknown:
            raise ValueError(f'--test-names not found among the input images: {unknown}')
    else:
        n_test = args.test_count if args.test_count is not None else int(round(args.test_frac * len(rels)))
        if n_test < 0 or n_test >= len(rels):
            raise ValueError(f'Cannot hold out {n_test} of {len(rels)} images (train would be empty)')
        if n_test == 0 and args.test_count is None and args.test_frac > 0:
            print(f'Warning: --test-frac {args.test_frac} of {len(rels)} images rounds to 0: the test split is empty. '
                  'Hold out images with --test-count N or --test-names NAME,... (or raise --test-frac).',
                  file=sys.stderr, flush=True)
        order = np.random.default_rng(args.seed).permutation(len(rels))
        test = [rels[i] for i in sorted(order[:n_test])]
    test_set = set(test)
    return [r for r in rels if r not in test_set], sorted(test_set)


def resize_long_side(img, max_size, interp):
    h, w = img.shape[:2]
    if max_size <= 0 or max(h, w) <= max_size:
        return img
    s = max_size / float(max(h, w))
    return cv2.resize(img, (max(1, round(w * s)), max(1, round(h * s))), interpolation=interp)


def to_u8_bgr(img):
    return np.ascontiguousarray((np.clip(img, 0, 1) * 255.0 + 0.5).astype(np.uint8)[..., ::-1])


def process_image(rel, split, n_versions, domain, depth_file, args, presets, manifest):
    """Write the GT and the hazy versions of one image; return its meta rows."""
    src = osp.join(args.input, rel)
    clear = decode_image(src)  # checked: a decompression bomb is refused before OpenCV sees it
    if depth_file is not None:
        depth = load_depth_file(depth_file, kind=args.depth_kind, png_scale=args.png_scale, focal=args.focal,
                                baseline=args.baseline, doffs=args.doffs)
        if depth.shape != clear.shape[:2]:
            raise ValueError(f'Depth shape mismatch: {depth_file} is {depth.shape[0]}x{depth.shape[1]} but image '
                             f'{src} is {clear.shape[0]}x{clear.shape[1]} (H x W)')
        depth, _ = fill_invalid_depth(depth, name=depth_file)
        source = f'{args.depth_kind}:{osp.basename(depth_file)}'
    else:
        depth, source = None, 'pseudo'
    clear = resize_long_side(clear, args.max_size, cv2.INTER_AREA)
    clear = to_u8_bgr(clear)[..., ::-1].astype(np.float32) / 255.0  # the GT as stored: hazy is built from it
    if depth is None:
        depth = pseudo_depth(clear)
    else:
        depth = resize_long_side(depth, args.max_size, cv2.INTER_LINEAR)
    scale = args.depth_scale if args.depth_scale is not None else presets[domain]['depth_scale']
    d = haze_depth(depth, depth_scale=scale, depth_norm=args.depth_norm)

    stem = image_key(rel)
    gt_rel = stem + '.png'
    gt_path = osp.join(args.output, split, 'GT', gt_rel)
    atomic_imwrite(to_u8_bgr(clear), gt_path)
    manifest.record(gt_path)
    rng = image_rng(args.seed, rel)
    rows = []
    for k in range(1, n_versions + 1):
        beta, A = sample_haze_params(rng, domain, presets)
        hazy, _ = synthesize_haze(clear, d, beta, A)
        hazy_rel = haze_name(stem, k, A, beta) + args.hazy_ext
        hazy_path = osp.join(args.output, split, 'hazy', hazy_rel)
        atomic_imwrite(to_u8_bgr(hazy), hazy_path)
        manifest.record(hazy_path)
        rows.append({'hazy': hazy_rel, 'gt': gt_rel, 'domain': domain, 'beta': f'{beta:.6f}', 'A': f'{A:.6f}',
                     'depth_source': source})
    return rows


def write_meta(rows, path):
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=META_COLUMNS, lineterminator='\n')
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(buf.getvalue(), path)


def check_basicsr_layout(pairs, where):
    """Refuse pairs that BasicSR's 1:1 layout cannot hold, before anything is written (``--basicsr-layout``).

    Args:
        pairs (list[tuple[str, str]]): (hazy, GT) paths relative to their folders.
        where (str): The hazy folder, for the message.

    Raises:
        ValueError: A hazy image lies in a subfolder (``paired_paths_from_folder`` lists only the top-level files of
            ``dataroot_lq``), or a hazy image and its GT have different extensions (BasicSR pairs names with them).
    """
    nested = [h for h, _ in pairs if '/' in h]
    if nested:
        raise ValueError(f'--basicsr-layout: {len(nested)} hazy image(s) lie in subfolders of {where}, e.g. '
                         f'{nested[:3]}; BasicSR\'s PairedImageDataset reads only the top-level files of a folder: '
                         'flatten the input folder first (nothing was written).')
    mixed = [(h, g) for h, g in pairs if osp.splitext(h)[1].lower() != osp.splitext(g)[1].lower()]
    if mixed:
        raise ValueError(f'--basicsr-layout: {len(mixed)} hazy image(s) in {where} have another extension than their '
                         f'GT, e.g. {mixed[:3]}; BasicSR pairs file names with their extension (nothing was written).')


def link_or_copy(src, dst):
    """Make ``dst`` a hard link to ``src`` (a copy where the file system has none), replacing ``dst`` atomically.

    Returns:
        str: 'link' or 'copy'.
    """
    folder = osp.dirname(dst)
    os.makedirs(folder, exist_ok=True)
    # file_io's temporary-file name: a link left behind by a kill counts as a stale temporary file
    tmp = osp.join(folder, f'.{osp.basename(dst)}.{secrets.token_hex(4)}.tmp')
    try:
        os.link(src, tmp)
    except OSError:  # no hard links on this file system (FAT, some network shares)
        with open(src, 'rb') as f_src, atomic_open(dst) as f_dst:
            shutil.copyfileobj(f_src, f_dst)
        return 'copy'
    try:
        os.replace(tmp, dst)
    except BaseException:
        os.remove(tmp)
        raise
    return 'link'


def write_basicsr_layout(split_dir, gt_dir, rows, manifest):
    """``--basicsr-layout``: SPLIT/GT_paired/<hazy name> = the GT of that hazy image, recorded in ``manifest``.

    Several hazy versions share one GT, which BasicSR's ``PairedImageDataset`` (names paired 1:1) cannot read;
    one GT name per hazy image can, with ``dataroot_lq: SPLIT/hazy``, ``dataroot_gt: SPLIT/GT_paired``.

    Returns:
        dict: The two dataroots and the numbers of hard links and copies written.
    """
    counts = {'link': 0, 'copy': 0}
    for row in rows:
        dst = osp.join(split_dir, PAIRED_GT, row['hazy'])
        counts[link_or_copy(osp.join(gt_dir, row['gt']), dst)] += 1
        manifest.record(dst)
    return {'dataroot_lq': osp.join(split_dir, 'hazy'), 'dataroot_gt': osp.join(split_dir, PAIRED_GT),
            'links': counts['link'], 'copies': counts['copy']}


def index_existing(args):
    """Write SPLIT/meta.csv for existing SPLIT/{hazy,GT} pairs; returns the summary dict."""
    split = args.index_existing
    hazy_dir, gt_dir = osp.join(split, 'hazy'), osp.join(split, 'GT')
    if not osp.isdir(gt_dir) and osp.isdir(osp.join(split, 'gt')):
        gt_dir = osp.join(split, 'gt')
    hazy = list_images(hazy_dir)
    gts = {}
    for rel in list_images(gt_dir):
        gts.setdefault(image_key(rel), rel)
    args.input = hazy_dir
    domains = resolve_domains(hazy, args)
    rows, missing = [], []
    for rel in hazy:
        stem = image_key(rel)
        # our own names first (haze_name: <stem>_<k>_<A>_<beta>), then RESIDE's first token
        ours = clear_stem(stem) or stem
        head = osp.join(osp.dirname(stem), osp.basename(stem).split('_')[0]).replace(os.sep, '/').lstrip('./')
        gt = gts.get(stem) or (gts.get(ours) if ours != stem else None) or gts.get(head) \
            or gts.get(osp.basename(stem).split('_')[0])
        if gt is None:
            missing.append(rel)
            continue
        rows.append({'hazy': rel, 'gt': gt, 'domain': domains[rel], 'beta': '', 'A': '', 'depth_source': 'unknown'})
    if missing:
        raise FileNotFoundError(f'No GT in {gt_dir} for {len(missing)} hazy image(s), e.g. {missing[:3]}')
    meta = osp.join(split, 'meta.csv')
    check_outputs_apart([meta], (args.domain_csv,), 'SPLIT/meta.csv')
    manifest = OutputManifest(split, TOOL)
    if osp.lexists(meta) and not manifest.owns(meta):  # e.g. the pair list a dataset ships with
        raise FileExistsError(f'{meta} was not written by make_haze_pairs.py (no record in {manifest.path}, or '
                              'changed since); it is never replaced, even with --overwrite: move it away (nothing '
                              'was written).')
    if osp.lexists(meta) and not args.overwrite:
        raise FileExistsError(f'{meta} exists: pass --overwrite to replace it')
    if args.basicsr_layout:
        check_basicsr_layout([(r['hazy'], r['gt']) for r in rows], hazy_dir)
        check_outputs_apart([osp.join(split, PAIRED_GT)], (hazy_dir, gt_dir), '--basicsr-layout folder')
        foreign = manifest.foreign_files(osp.join(split, PAIRED_GT))
        if foreign:
            raise FileExistsError(f'{len(foreign)} file(s) in {osp.join(split, PAIRED_GT)} were not written by '
                                  f'make_haze_pairs.py (or changed since), e.g. {foreign[:3]}: move them away '
                                  '(nothing was written).')
        manifest.remove_recorded()  # links of hazy images that may be gone since
    write_meta(rows, meta)
    manifest.record(meta)
    summary = {'meta': meta, 'pairs': len(rows), 'gt_images': len({r['gt'] for r in rows})}
    if args.basicsr_layout:
        summary['basicsr_layout'] = write_basicsr_layout(split, gt_dir, rows, manifest)
    print(json.dumps(summary, indent=2))
    return summary


def main(argv=None):
    """Run the CLI; returns the JSON-able summary dict."""
    args = parse_args(argv)
    if args.index_existing:
        return index_existing(args)
    t0 = time.time()
    presets = {k: dict(v) for k, v in DOMAIN_PRESETS.items()}
    for dom in presets.values():
        if args.beta is not None:
            dom['beta'] = tuple(args.beta)
        if args.A is not None:
            dom['A'] = tuple(args.A)
    inputs = (args.input, args.depth_dir, args.domain_csv)
    check_outputs_apart([osp.join(args.output, split) for split in SPLITS], inputs, '--output folder')
    rels = list_images(args.input)
    domains = resolve_domains(rels, args)
    depth_files = resolve_depth_files(rels, args)
    train, test = split_images(rels, args)
    if args.basicsr_layout:
        check_basicsr_layout([(rel, rel) for rel in rels], args.input)
    manifest = OutputManifest(args.output, TOOL)
    for split in SPLITS:
        meta = osp.join(args.output, split, 'meta.csv')
        if osp.exists(meta) and not args.overwrite:
            raise FileExistsError(f'{meta} exists: choose another --output or pass --overwrite')
    # a new split must not inherit files of the previous run (an old test image would stay beside train), and no
    # file of anyone else may be replaced or mixed into the dataset
    foreign = [f for split in SPLITS for sub in ('hazy', 'GT', PAIRED_GT)
               for f in manifest.foreign_files(osp.join(args.output, split, sub))]
    foreign += [m for m in (osp.join(args.output, s, 'meta.csv') for s in SPLITS)
                if osp.isfile(m) and not manifest.owns(m)]
    if foreign:
        raise FileExistsError(f'{len(foreign)} file(s) in {args.output} were not written by make_haze_pairs.py (or '
                              f'changed since), e.g. {foreign[:3]}; they are never replaced or deleted: move them '
                              'away or choose another --output (nothing was written).')
    if args.overwrite:
        manifest.remove_recorded(protect=inputs)

    summary = {'output': osp.abspath(args.output), 'seed': args.seed, 'splits': {}}
    for split, items, n_ver in (('train', train, args.versions), ('test', test, args.test_versions)):
        rows = []
        for rel in items:
            rows.extend(process_image(rel, split, n_ver, domains[rel], depth_files[rel], args, presets, manifest))
        if items:
            write_meta(rows, osp.join(args.output, split, 'meta.csv'))
            manifest.record(osp.join(args.output, split, 'meta.csv'))
        summary['splits'][split] = {
            'images': len(items),
            'pairs': len(rows),
            'names': items,
            'domains': {d: sum(1 for r in items if domains[r] == d) for d in sorted(set(domains.values()))},
            'depth_files': sum(1 for r in items if depth_files[r] is not None),
        }
        if items and args.basicsr_layout:
            split_dir = osp.join(args.output, split)
            summary['splits'][split]['basicsr_layout'] = write_basicsr_layout(split_dir, osp.join(split_dir, 'GT'),
                                                                              rows, manifest)
    summary['seconds'] = round(time.time() - t0, 2)
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == '__main__':
    main()
