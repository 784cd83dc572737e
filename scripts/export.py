"""Export a trained network to ONNX and ``torch.export`` (.pt2), and check both against the eager network.

The net is built as ``mixcl-dehaze`` builds it: from ``--opt`` (its ``network_g``) or, for MixDehazeNet /
MixCLDehazeNet, inferred from the checkpoint; weights in BasicSR (``params``/``params_ema``) or official format.
Every registered net with an entry in ``mixcl_arch.export.EXPORT_SPECS`` exports (MixDehazeNet, MixCLDehazeNet,
AODNet, DehazeNet). The files take images in [0, 1] of any batch, height and width; MixCLDehazeNet also takes its
(B, K, E) conditioning vectors as the second input ``cond``. See docs/export.md.

Writes OUT_DIR/NAME.onnx and/or OUT_DIR/NAME.pt2, then runs both and the eager net on random inputs of every
``--verify-sizes`` size (odd and below 40 px by default) and prints a JSON summary. Exit status 1 when a difference
exceeds ``--tolerance``, 2 for command-line errors.

Examples:
    python scripts/export.py --weights experiments/X/models/net_g_latest.pth --out-dir exported
    python scripts/export.py --weights net_g.pth --opt options/test/test_AODNet_demo.yml --out-dir exported \\
        --formats onnx
"""
import argparse
import json
import os
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))
sys.path.insert(0, ROOT)

FORMATS = ('onnx', 'pt2')
DEFAULT_VERIFY_SIZES = ('45x61', '67x33', '21x37')


def parse_size(text):
    """'HxW' (or 'N' for N x N) -> (H, W)."""
    parts = text.lower().split('x')
    try:
        h, w = (int(parts[0]), ) * 2 if len(parts) == 1 else map(int, parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected a size HxW or N, got {text!r}') from None
    if h < 1 or w < 1:
        raise argparse.ArgumentTypeError(f'sizes must be >= 1, got {text!r}')
    return h, w


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--weights', required=True, help='network checkpoint (BasicSR params/params_ema or official file)')
    p.add_argument('--opt', help='options YAML whose network_g describes the net (needed except for MixDehazeNet and '
                   'MixCLDehazeNet, which are inferred from the checkpoint)')
    p.add_argument('--param-key', default=None, help='weights key (default: params_ema, then params, then state_dict)')
    p.add_argument('--out-dir', required=True, help='folder for the exported files')
    p.add_argument('--name', default=None, help='file stem (default: the checkpoint file stem)')
    p.add_argument('--formats', nargs='+', default=list(FORMATS), choices=FORMATS, help='what to write (default: both)')
    p.add_argument('--opset', type=int, default=None, help='ONNX opset (default: chosen by torch)')
    p.add_argument('--verify-sizes', nargs='*', type=parse_size, default=[parse_size(s) for s in DEFAULT_VERIFY_SIZES],
                   metavar='HxW', help=f'sizes checked against eager (default: {" ".join(DEFAULT_VERIFY_SIZES)}); '
                   'none to skip')
    p.add_argument('--tolerance', type=float, default=1e-4, help='largest allowed difference (default 1e-4)')
    return p.parse_args(argv)


def main(argv=None):
    """Run the export; returns the exit status."""
    args = parse_args(argv)
    import torch

    import mixcl_arch  # noqa: F401  (registers the archs; before basicsr: see mixcl_arch/compat.py)
    from mixcl_arch.export import export_metadata, export_program, save_onnx, save_pt2, verify_export
    from mixcl_arch.restorers import build_net_from_checkpoint, load_options
    try:
        net, net_opt = build_net_from_checkpoint(args.weights, load_options(args.opt), args.param_key)
        program = export_program(net)
    except (ValueError, FileNotFoundError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 1
    metadata = export_metadata(net, net_opt)
    stem = os.path.join(args.out_dir, args.name or os.path.splitext(os.path.basename(args.weights))[0])
    paths = {fmt: f'{stem}.{fmt}' for fmt in args.formats}
    if 'pt2' in paths:
        save_pt2(program, paths['pt2'], metadata)
    if 'onnx' in paths:
        save_onnx(program, paths['onnx'], metadata, args.opset)
    with torch.no_grad():
        diffs = verify_export(net, args.verify_sizes, paths.get('onnx'), paths.get('pt2'))
    worst = max((d for per_size in diffs.values() for d in per_size.values()), default=0.0)
    summary = {'arch': metadata['arch'], 'inputs': metadata['inputs'], 'output': metadata['output'], 'files': paths,
               'max_abs_diff': diffs, 'tolerance': args.tolerance, 'ok': worst <= args.tolerance}
    print(json.dumps(summary, indent=2))
    if worst > args.tolerance:
        print(f'error: an exported model differs from the eager net by {worst:.3g} > --tolerance {args.tolerance}',
              file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
