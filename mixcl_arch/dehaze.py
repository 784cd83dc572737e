"""Dehaze your own photos: ``python -m mixcl_arch.dehaze -i IN -o OUT --weights W [--opt YAML]``.

Also installed as the console script ``mixcl-dehaze``. IN is an image file or a folder (jpg, jpeg, png, webp, bmp,
tif, tiff; ``--recursive`` for sub-folders, mirrored under OUT); no ground truth is needed. See docs/inference.md.

Every image is checked before it is decoded: one over ``--max-pixels`` (from its header), unreadable, out of memory
or failing in the network is skipped with its reason and the run goes on; the summary is always printed. Outputs
never replace an input, and ``--overwrite`` replaces only files this tool recorded as its own (OUT/.mixcl_outputs.jsonl,
see :mod:`mixcl_arch.utils.output_guard`).

Exit status: 0 when nothing failed and every image has its output (written now or already there), 1 when any image
failed or nothing could be processed (no images, or the model could not be built), 2 for command-line errors.
"""
import dataclasses
import json
import os
import sys
import time
import warnings

if __name__ == '__main__':  # python -m mixcl_arch.dehaze: parse before the imports below (torch, seconds)
    from mixcl_arch_cli import cli_dehaze
    sys.exit(cli_dehaze())

from mixcl_arch.dehaze_args import parse_args  # noqa: E402
from mixcl_arch.restorers import ConditioningFallbackWarning, build_restorer  # noqa: E402
from mixcl_arch.utils.image_io import (IMG_EXTENSIONS, decode_image, img2tensor01, is_image_file,  # noqa: E402
                                       output_extension, scan_images, side_by_side, tensor2img01, write_image)
from mixcl_arch.utils.output_guard import OutputManifest, path_relation  # noqa: E402

TOOL = 'mixcl-dehaze'


def collect_inputs(path, recursive=False):
    """List the image files under ``path`` (:func:`~mixcl_arch.utils.image_io.scan_images`: hidden files skipped).

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
    images, others = scan_images(path, recursive, allow_empty=True, with_others=True)
    return [(os.path.join(path, r), r) for r in images], [os.path.join(path, r) for r in others]


def output_path(args, in_path, rel, info):
    """Where the result of ``in_path`` goes (see --output, --suffix, --ext, --alpha)."""
    in_ext = os.path.splitext(in_path)[1]
    if os.path.isfile(args.input) and is_image_file(args.output):
        return args.output
    ext = output_extension(in_ext, info, args.ext, args.alpha)
    stem = os.path.splitext(rel)[0]
    return os.path.join(args.output, stem + args.suffix + ext)


def output_root(args):
    """The folder all outputs (and the manifest) go under: OUT, or the named output file's folder."""
    if os.path.isfile(args.input) and is_image_file(args.output):
        return os.path.dirname(os.path.abspath(args.output))
    return args.output


def compare_path(args, out_path):
    """The side-by-side image's path: OUT/compare/<same relative name>."""
    base = output_root(args)
    return os.path.join(base, 'compare', os.path.relpath(out_path, base))


def map_paths(args, out_path):
    """--save-maps files of one output: OUT/maps/<relative name without extension>_<map>.png, in MAP_NAMES order."""
    from mixcl_arch.baselines.dcp import MAP_NAMES
    base = output_root(args)
    stem = os.path.splitext(os.path.relpath(out_path, base))[0]
    return [os.path.join(base, 'maps', f'{stem}_{name}.png') for name in MAP_NAMES]


def exclude_own_outputs(images, args, manifest):
    """Split the inputs into those to process and outputs of this tool that must not be dehazed again.

    Dropped quietly: files recorded in ``manifest``; with OUT (or OUT/compare) inside the input tree
    (``--recursive``), anything under it. Dropped with a reason: when input and output are one folder, unrecorded
    names ending in ``--suffix`` (most likely outputs of a run before manifests existed, but possibly real photos:
    they are listed).

    Returns:
        tuple[list, int, list[str]]: Kept (path, rel) pairs, the number of own outputs dropped, and the paths
        dropped because of their suffix.
    """
    if os.path.isfile(args.input):
        return images, 0, []
    nested = path_relation(args.output, args.input) == 'inside'
    same = path_relation(args.output, args.input) == 'same'
    compare = os.path.join(args.output, 'compare')
    compare_in_input = path_relation(compare, args.input) == 'inside'
    kept, own, by_suffix = [], 0, []
    for path, rel in images:
        if manifest.owns(path) or (nested and path_relation(path, args.output) == 'inside') \
                or (compare_in_input and path_relation(path, compare) == 'inside'):
            own += 1
        elif same and args.suffix and os.path.splitext(rel)[0].endswith(args.suffix):
            by_suffix.append(path)
        else:
            kept.append((path, rel))
    return kept, own, by_suffix


def _build(args):
    kwargs = {}
    amp = 'fp16' if args.fp16 else 'bf16' if args.bf16 else None
    if args.method == 'net':
        clip = {}
        if args.clip_model:
            clip['model'] = args.clip_model
        if args.clip_pretrained:
            clip['pretrained'] = args.clip_pretrained
        if args.clip_torchscript:
            clip['torchscript'] = True
        cliphaze = {k: v for k, v in (('density_source', args.density_source),
                                      ('standin_domain', args.standin_domain)) if v is not None}
        kwargs = dict(param_key=args.param_key, clip=clip, cond_mode=args.cond_mode, cond_extra=args.cond_extra,
                      cond_fallback=args.cond_fallback, feature_store=args.feature_store, cliphaze_cond=cliphaze,
                      tile=args.tile or None, tile_overlap=args.tile_overlap, amp=amp,
                      allow_unsafe_pickle=args.allow_unsafe_pickle, backend=args.backend)
    else:
        text = dict(kv.split('=', 1) for kv in args.param)  # parsed by the baseline's options dataclass
        if args.method == 'dehazenet':  # its transmission net tiles too; A and refinement use the whole image
            text.setdefault('tile', str(args.tile))
            text.setdefault('tile_overlap', str(args.tile_overlap))
            if args.allow_unsafe_pickle:
                text['allow_unsafe_pickle'] = 'true'
        kwargs = {'param_text': text}
        if amp:
            print(f'note: --fp16/--bf16 only apply to --method net; ignored for {args.method}.', file=sys.stderr)
    with warnings.catch_warnings():  # main() prints the restorer's notes itself
        warnings.simplefilter('ignore', ConditioningFallbackWarning)
        return build_restorer(args.method, weights=args.weights, opt=args.opt, device=args.device, **kwargs)


def _replace_check(targets, args, manifest):
    """Why the existing files among ``targets`` may not be written now, or None when all may be.

    Returns:
        tuple[str, str] | None: ('skipped', the line to print) or ('failed', the reason).
    """
    existing = [t for t in targets if os.path.exists(t)]
    if not existing:
        return None
    if not args.overwrite:
        return 'skipped', f'skipped (output exists, use --overwrite): {", ".join(existing)}'
    foreign = [t for t in existing if not manifest.owns(t)]
    if foreign:
        return 'failed', (f'{", ".join(foreign)} exists and was not written by this tool (no matching record in '
                          f'{manifest.path}); not replaced even with --overwrite: move it away or choose another '
                          '--output')
    return None


def _targets(args, in_path, rel, info, input_files, written):
    """Output (and compare) paths of one image, or the reason they cannot be written.

    Returns:
        tuple[list[str], str | None]: The paths, and None or why writing them would destroy something.
    """
    out_path = output_path(args, in_path, rel, info)
    targets = [out_path] + ([compare_path(args, out_path)] if args.compare else [])
    kinds = ['output', 'compare image'][:len(targets)]
    if args.save_maps:
        maps = map_paths(args, out_path)
        targets += maps
        kinds += ['map'] * len(maps)
    for target, kind in zip(targets, kinds):
        real = os.path.realpath(target)
        if path_relation(in_path, target) == 'same' or real in input_files:
            what = 'its own input' if path_relation(in_path, target) == 'same' else 'another input image'
            return targets, (f'the {kind} {target} would replace {what}; choose another --output or --suffix '
                             '(inputs are never overwritten, not even with --overwrite)')
        if real in written:
            return targets, (f'{kind} {target} already written by another input in this run (same name, '
                             'different extension); use --ext auto or separate folders')
    return targets, None


def main(argv=None):
    """Run the CLI; returns the exit status (see the module docstring)."""
    args = parse_args(argv)
    try:
        images, others = collect_inputs(args.input, args.recursive)
    except FileNotFoundError as err:
        print(f'error: {err}', file=sys.stderr)
        return 1
    manifest = OutputManifest(output_root(args), TOOL)
    found = len(images)
    images, own, by_suffix = exclude_own_outputs(images, args, manifest)
    for path in others:
        print(f'skipped (not an image, supported: {" ".join(IMG_EXTENSIONS)}): {path}', file=sys.stderr)
    if own:
        print(f'note: {own} file(s) in the input are outputs of this tool and are not dehazed again.', file=sys.stderr)
    for path in by_suffix:
        print(f'skipped (name ends with --suffix {args.suffix!r} and input = output folder, so it looks like an '
              f'output; rename it or use another --suffix to process it): {path}', file=sys.stderr)
    if not images:
        if os.path.isfile(args.input):
            what = 'is not an image file'
        elif found:
            what = (f'contains no images to process ({found} found: {own} outputs of this tool, {len(by_suffix)} '
                    'named with the --suffix)')
        else:
            what = 'contains no images'
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
    stats = {'processed': 0, 'skipped_existing': 0, 'skipped_non_image': len(others),
             'skipped_suffix': len(by_suffix), 'failed': 0}
    failures, written, seconds = [], set(), 0.0
    input_files = {os.path.realpath(p) for p, _ in images}

    def fail(path, why, label='failed'):
        stats['failed'] += 1
        failures.append((path, why))
        tqdm.write(f'{label}: {path}: {why}', file=sys.stderr)

    bar = tqdm(images, desc='dehaze', unit='img', file=sys.stderr, dynamic_ncols=True)
    try:
        for in_path, rel in bar:
            bar.set_postfix_str(rel[-40:])
            try:
                rgb, info = decode_image(in_path, max_pixels=args.max_pixels, with_info=True)
            except MemoryError:
                fail(in_path, 'out of memory while decoding', 'failed (unreadable)')
                continue
            except (ValueError, OSError) as err:
                fail(in_path, str(err), 'failed (unreadable)')
                continue
            targets, problem = _targets(args, in_path, rel, info, input_files, written)
            if problem:
                fail(in_path, problem)
                continue
            written.update(os.path.realpath(t) for t in targets)  # reserved, so a name clash is always reported
            refusal = _replace_check(targets, args, manifest)
            if refusal and refusal[0] == 'skipped':
                stats['skipped_existing'] += 1
                tqdm.write(refusal[1], file=sys.stderr)
                continue
            if refusal:
                fail(in_path, refusal[1])
                continue
            try:
                start = time.perf_counter()
                if args.save_maps:  # one DCP pass gives the output and its maps
                    estimate = restorer.estimate(img2tensor01(rgb))
                    result = tensor2img01(estimate['J'])
                else:
                    result = tensor2img01(restorer(img2tensor01(rgb)))
                seconds += time.perf_counter() - start
                write_image(result, targets[0], info, args.alpha, args.quality)
                manifest.record(targets[0])
                if args.save_maps:
                    from mixcl_arch.baselines.dcp import MAP_NAMES, dcp_maps
                    maps = dcp_maps(estimate)
                    for path, name in zip(targets[-len(MAP_NAMES):], MAP_NAMES):
                        write_image(maps[name], path)
                        manifest.record(path)
                if args.compare:
                    plain = dataclasses.replace(info, alpha=None)
                    write_image(side_by_side(rgb, result), targets[1], plain, 'drop', args.quality)
                    manifest.record(targets[1])
            except Exception as err:  # one bad image (MemoryError included) must not stop a folder run
                fail(in_path, f'{type(err).__name__}: {err}')
                continue
            stats['processed'] += 1
    finally:  # the summary is printed even when the run is interrupted
        bar.close()
        stats['seconds_per_image'] = round(seconds / stats['processed'], 4) if stats['processed'] else None
        print(f"done: {stats['processed']} processed, {stats['skipped_existing']} skipped (output exists), "
              f"{stats['skipped_non_image']} skipped (not an image), {stats['skipped_suffix']} skipped (--suffix "
              f"name), {stats['failed']} failed -> {args.output}")
        for path, why in failures:
            print(f'  failed: {path}: {why}')
        print('summary: ' + json.dumps(dict(stats, method=restorer.name, num_params=restorer.num_params)))
    return 0 if stats['failed'] == 0 and stats['processed'] + stats['skipped_existing'] > 0 else 1

