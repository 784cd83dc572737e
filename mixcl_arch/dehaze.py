"""Dehaze your own photos: ``python -m mixcl_arch.dehaze -i IN -o OUT --weights W [--opt YAML]``.

Also installed as the console script ``mixcl-dehaze``. IN is an image file or a folder (jpg, jpeg, png, webp, bmp,
tif, tiff; ``--recursive`` for sub-folders, mirrored under OUT); no ground truth is needed. See docs/inference.md.

Exit status: 0 when at least one image was written (or every image already had an output), 1 when nothing could be
processed (no images, every image failed, or the model could not be built), 2 for command-line errors.
"""
import argparse
import dataclasses
import json
import os
import sys
import time
import warnings

from mixcl_arch.restorers import METHODS, ConditioningFallbackWarning, build_restorer
from mixcl_arch.utils.image_io import IMG_EXTENSIONS, img2tensor01, is_image_file, output_extension, \
    read_image, side_by_side, tensor2img01, write_image


def parse_args(argv=None):
    """Parse the command line (``argv`` without the program name; None -> ``sys.argv[1:]``)."""
    p = argparse.ArgumentParser(
        prog='mixcl-dehaze',
        description='Dehaze images with MixCLDehazeNet / MixDehazeNet (or a baseline). See docs/inference.md.')
    p.add_argument('-i', '--input', required=True, help='image file or folder')
    p.add_argument('-o', '--output', required=True,
                   help='output folder (or an output file name when the input is one file)')
    p.add_argument('--weights', help='network checkpoint (BasicSR params/params_ema or official state_dict file)')
    p.add_argument('--opt', help='train/test options YAML: network_g builds the net, clip: configures CLIP')
    p.add_argument('--method', default='net', choices=METHODS,
                   help='net (default) = trained network; others are baselines')
    p.add_argument('--param', action='append', default=[], metavar='KEY=VALUE',
                   help='option of a baseline method (repeatable), e.g. --method dcp --param omega=0.9')
    p.add_argument('--param-key', default=None, help='weights key (default: params_ema, then params, then state_dict)')
    p.add_argument('--device', default='auto', help='auto (default: CUDA when available), cpu, cuda or cuda:N')
    amp = p.add_mutually_exclusive_group()
    amp.add_argument('--fp16', action='store_true', help='float16 autocast (meant for CUDA; works on CPU too)')
    amp.add_argument('--bf16', action='store_true', help='bfloat16 autocast')
    p.add_argument('--tile', type=int, default=512, help='tile size for large images (default 512); 0 disables tiling')
    p.add_argument('--tile-overlap', type=int, default=32, help='overlap of neighbouring tiles in pixels (default 32)')
    p.add_argument('--clip-model', default=None, help='open_clip model name (overrides clip.model)')
    p.add_argument('--clip-pretrained', default=None,
                   help='CLIP weights: open_clip tag or local file (overrides clip.pretrained)')
    p.add_argument('--cond-mode', default=None, choices=('hard', 'soft'),
                   help='CLIP conditioning mode (default: from the YAML, else hard)')
    p.add_argument('--cond-fallback', default=None,
                   help='when CLIP weights are missing: error, none (zero conditioning) or a domain name such as '
                   'outdoor/indoor (needs --feature-store). Default: clip.cond_fallback of the YAML, else error')
    p.add_argument('--feature-store', default=None,
                   help='feature store file with per-domain text features (default: clip.feature_store of the YAML)')
    p.add_argument('--compare', action='store_true', help='also save input | output side by side under OUT/compare')
    p.add_argument('--overwrite', action='store_true', help='replace existing outputs (default: skip them)')
    p.add_argument('--suffix', default='', help='appended to output file stems, e.g. _dehazed')
    p.add_argument('--ext', default='auto',
                   help='output format: auto (default: keep the input format; PNG when it cannot hold 16 bits or '
                   'alpha), png, jpg, webp, tif')
    p.add_argument('--alpha', default='keep', choices=('keep', 'drop'),
                   help='alpha channel of RGBA inputs: keep (default, copied unchanged) or drop')
    p.add_argument('--quality', type=int, default=95, help='JPEG/WebP quality (default 95)')
    p.add_argument('--recursive', action='store_true', help='also process sub-folders')
    args = p.parse_args(argv)
    if args.tile < 0 or args.tile_overlap < 0 or (args.tile and args.tile_overlap >= args.tile):
        p.error(f'need --tile 0 (off) or --tile > --tile-overlap >= 0, got {args.tile} and {args.tile_overlap}')
    if args.ext != 'auto' and '.' + args.ext.lower().lstrip('.') not in IMG_EXTENSIONS:
        p.error(f'--ext {args.ext}: use auto or one of {", ".join(e[1:] for e in IMG_EXTENSIONS)}')
    if args.method == 'net' and not args.weights and not args.opt:
        p.error('--method net needs --weights (or --opt with path.pretrain_network_g)')
    if args.param and args.method in ('net', 'hazy'):
        p.error(f'--param sets baseline options (dcp, dehazenet); --method {args.method} takes none')
    bad = [kv for kv in args.param if '=' not in kv or not kv.split('=', 1)[0]]
    if bad:
        p.error(f'--param needs KEY=VALUE, got {bad}')
    return args


def collect_inputs(path, recursive=False):
    """List the image files under ``path``.

    Returns:
        tuple[list[tuple[str, str]], list[str]]: (image path, path relative to the input folder) pairs, sorted;
        and the non-image files found (reported as skipped).

    Raises:
        FileNotFoundError: If ``path`` does not exist.
    """
    if os.path.isfile(path):
        return ([(path, os.path.basename(path))], []) if is_image_file(path) else ([], [path])
    if not os.path.isdir(path):
        raise FileNotFoundError(f'Input not found: {path}')
    images, others = [], []
    for root, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith('.')) if recursive else []
        for name in sorted(files):
            full = os.path.join(root, name)
            (images if is_image_file(name) else others).append(full)
    return [(f, os.path.relpath(f, path)) for f in sorted(images)], sorted(others)


def output_path(args, in_path, rel, info):
    """Where the result of ``in_path`` goes (see --output, --suffix, --ext, --alpha)."""
    in_ext = os.path.splitext(in_path)[1]
    if os.path.isfile(args.input) and is_image_file(args.output):
        return args.output
    ext = output_extension(in_ext, info, args.ext, args.alpha)
    stem = os.path.splitext(rel)[0]
    return os.path.join(args.output, stem + args.suffix + ext)


def compare_path(args, out_path):
    """The side-by-side image's path: OUT/compare/<same relative name>."""
    base = args.output if not (os.path.isfile(args.input) and is_image_file(args.output)) else \
        os.path.dirname(os.path.abspath(args.output))
    return os.path.join(base, 'compare', os.path.relpath(out_path, base))


def exclude_own_outputs(images, args):
    """Drop inputs that this tool wrote: files under OUT (when OUT is a sub-folder of the input, e.g. with
    --recursive) and OUT/compare, and, when input and output are one folder, names ending in ``--suffix``.
    A re-run then never dehazes its own results again."""
    if os.path.isfile(args.input):
        return images
    out_dir = os.path.realpath(args.output)
    in_dir = os.path.realpath(args.input)
    kept = []
    for path, rel in images:
        real = os.path.realpath(path)
        if out_dir != in_dir and (real.startswith(out_dir + os.sep)):
            continue
        if real.startswith(os.path.join(out_dir, 'compare') + os.sep):
            continue
        if out_dir == in_dir and args.suffix and os.path.splitext(rel)[0].endswith(args.suffix):
            continue
        kept.append((path, rel))
    return kept


def _same_file(a, b):
    return os.path.exists(b) and os.path.samefile(a, b)


def _build(args):
    kwargs = {}
    amp = 'fp16' if args.fp16 else 'bf16' if args.bf16 else None
    if args.method == 'net':
        clip = {}
        if args.clip_model:
            clip['model'] = args.clip_model
        if args.clip_pretrained:
            clip['pretrained'] = args.clip_pretrained
        kwargs = dict(param_key=args.param_key, clip=clip, cond_mode=args.cond_mode, cond_fallback=args.cond_fallback,
                      feature_store=args.feature_store, tile=args.tile or None, tile_overlap=args.tile_overlap, amp=amp)
    else:
        kwargs = dict(kv.split('=', 1) for kv in args.param)
        if args.method == 'dehazenet':  # its transmission net tiles too; A and refinement use the whole image
            kwargs.setdefault('tile', args.tile)
            kwargs.setdefault('tile_overlap', args.tile_overlap)
        if amp:
            print(f'note: --fp16/--bf16 only apply to --method net; ignored for {args.method}.', file=sys.stderr)
    with warnings.catch_warnings():  # main() prints the restorer's notes itself
        warnings.simplefilter('ignore', ConditioningFallbackWarning)
        return build_restorer(args.method, weights=args.weights, opt=args.opt, device=args.device, **kwargs)


def main(argv=None):
    """Run the CLI; returns the exit status (see the module docstring)."""
    args = parse_args(argv)
    try:
        images, others = collect_inputs(args.input, args.recursive)
    except FileNotFoundError as err:
        print(f'error: {err}', file=sys.stderr)
        return 1
    images = exclude_own_outputs(images, args)
    for path in others:
        print(f'skipped (not an image, supported: {" ".join(IMG_EXTENSIONS)}): {path}', file=sys.stderr)
    if not images:
        what = 'is not an image file' if os.path.isfile(args.input) else 'contains no images'
        print(f'error: {args.input} {what} (supported extensions: {" ".join(IMG_EXTENSIONS)}); nothing to do.',
              file=sys.stderr)
        return 1
    try:
        restorer = _build(args)
    except (ValueError, RuntimeError, FileNotFoundError, ImportError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 1
    for note in getattr(restorer, 'notes', []):
        print(f'note: {note}', file=sys.stderr)

    from tqdm import tqdm
    stats = {'processed': 0, 'skipped_existing': 0, 'skipped_non_image': len(others), 'failed': 0}
    failures, written, seconds = [], set(), 0.0
    input_files = {os.path.realpath(p) for p, _ in images}
    bar = tqdm(images, desc='dehaze', unit='img', file=sys.stderr, dynamic_ncols=True)
    for in_path, rel in bar:
        bar.set_postfix_str(rel[-40:])
        try:
            rgb, info = read_image(in_path)
        except (ValueError, FileNotFoundError, OSError) as err:
            stats['failed'] += 1
            failures.append((in_path, str(err)))
            tqdm.write(f'failed (unreadable): {in_path}: {err}', file=sys.stderr)
            continue
        out_path = output_path(args, in_path, rel, info)
        if _same_file(in_path, out_path) or os.path.realpath(out_path) in input_files:
            stats['failed'] += 1
            what = 'its own input' if _same_file(in_path, out_path) else 'another input image'
            failures.append((in_path, f'output {out_path} would replace {what}'))
            tqdm.write(f'failed: the output {out_path} would replace {what}; choose another --output or --suffix '
                       '(inputs are never overwritten, not even with --overwrite).', file=sys.stderr)
            continue
        if out_path in written:
            stats['failed'] += 1
            failures.append((in_path, f'output name {out_path} already used by another input'))
            tqdm.write(f'failed: {in_path}: output {out_path} already written by another input in this run '
                       '(same name, different extension); use --ext auto or separate folders.', file=sys.stderr)
            continue
        if os.path.exists(out_path) and not args.overwrite:
            stats['skipped_existing'] += 1
            tqdm.write(f'skipped (output exists, use --overwrite): {out_path}', file=sys.stderr)
            continue
        try:
            start = time.perf_counter()
            result = tensor2img01(restorer(img2tensor01(rgb)))
            seconds += time.perf_counter() - start
            write_image(result, out_path, info, args.alpha, args.quality)
            written.add(out_path)
            if args.compare:
                plain = dataclasses.replace(info, alpha=None)
                write_image(side_by_side(rgb, result), compare_path(args, out_path), plain, 'drop', args.quality)
        except Exception as err:  # one bad image must not stop a folder run; it is reported below
            stats['failed'] += 1
            failures.append((in_path, f'{type(err).__name__}: {err}'))
            tqdm.write(f'failed: {in_path}: {type(err).__name__}: {err}', file=sys.stderr)
            continue
        stats['processed'] += 1
    bar.close()

    stats['seconds_per_image'] = round(seconds / stats['processed'], 4) if stats['processed'] else None
    print(f"done: {stats['processed']} processed, {stats['skipped_existing']} skipped (output exists), "
          f"{stats['skipped_non_image']} skipped (not an image), {stats['failed']} failed -> {args.output}")
    for path, why in failures:
        print(f'  failed: {path}: {why}')
    print('summary: ' + json.dumps(dict(stats, method=restorer.name, num_params=restorer.num_params)))
    ok = stats['processed'] > 0 or (stats['failed'] == 0 and stats['skipped_existing'] > 0)
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
