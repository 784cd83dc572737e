"""Convert an original MixDehazeNet / MixCLDehazeNet checkpoint to BasicSR's ``{'params': ...}`` format.

The original code saves ``{'state_dict': {'module.xxx': ...}, 'optimizer': ..., 'epoch': ..., 'best_psnr': ...}``.
This script strips the DataParallel prefix, drops the optimizer, checks that the weights load strictly into the
matching mixcl_arch network (architecture inferred from the keys unless given) and writes the result atomically,
as ``.pth`` or, with ``--format safetensors`` (or an output ending in ``.safetensors``), as safetensors (recommended:
loading it can never run code). The input is read with ``torch.load(weights_only=True)``; a legacy file that needs
full unpickling loads only with ``--allow-unsafe-pickle`` (it can execute arbitrary code: files you trust only).

Example:
    python scripts/convert_official_checkpoint.py -i saved_models/indoor/MixDehazeNet-s.pth \
        -o experiments/pretrained_models/MixDehazeNet_S_ITS.safetensors
"""
import argparse
import json
import os
import sys

# the keys of ARCHS and mixcl_arch.utils.checkpoint.SAVE_FORMATS, spelled out so that --help needs no torch
# (tests/test_polish.py checks that they agree)
ARCH_NAMES = ('MixCLDehazeNet', 'MixDehazeNet')
FORMATS = ('pth', 'safetensors')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('-i', '--input', required=True, help='official checkpoint (.pth/.pk)')
    parser.add_argument('-o', '--output', required=True, help='BasicSR-format output file')
    parser.add_argument('--arch', choices=ARCH_NAMES, default=None, help='default: inferred from the keys')
    parser.add_argument('--variant', choices=['T', 'S', 'B', 'L'], default=None, help='default: inferred depths')
    parser.add_argument('--overwrite', action='store_true')
    parser.add_argument('--format', choices=FORMATS, default=None,
                        help='output format (default: safetensors for an output ending in .safetensors, else pth)')
    parser.add_argument('--allow-unsafe-pickle', action='store_true',
                        help='fully unpickle an input that weights_only refuses. DANGEROUS: can execute arbitrary '
                        'code; only for files you trust')
    return parser.parse_args(argv)


if __name__ == '__main__':
    parse_args()  # --help and usage errors answer here, before the imports below (torch and basicsr take seconds)

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir)))
from mixcl_arch.archs.mixdehazenet_arch import MixCLDehazeNet, MixDehazeNet  # noqa: E402
from mixcl_arch.utils.checkpoint import (check_state_dict, extract_state_dict, infer_arch_from_state_dict,  # noqa: E402
                                         load_checkpoint_file, save_weights_file)
from mixcl_arch.utils.output_guard import check_outputs_apart  # noqa: E402

ARCHS = {'MixDehazeNet': MixDehazeNet, 'MixCLDehazeNet': MixCLDehazeNet}


def convert(src, dst, arch=None, variant=None, overwrite=False, fmt='pth', allow_unsafe_pickle=False):
    """Convert ``src`` to ``dst``; returns a summary dict.

    Raises:
        ValueError: ``dst`` is ``src`` (also through a symlink or hard link), or the weights do not fit strictly.
        FileExistsError: ``dst`` exists and ``overwrite`` is False.
    """
    check_outputs_apart([dst], [src], '-o/--output')
    if os.path.exists(dst) and not overwrite:
        raise FileExistsError(f'{dst} exists; pass --overwrite to replace it.')
    ckpt = load_checkpoint_file(src, allow_unsafe_pickle)
    state = extract_state_dict(ckpt, None, src)
    opt = infer_arch_from_state_dict(state)
    arch = arch or opt.pop('type')
    opt.pop('type', None)
    if variant:
        opt.pop('depths')
    net = ARCHS[arch](variant=variant, **opt)
    check_state_dict(net, state, src, strict=True)
    net.load_state_dict(state, strict=True)
    save_weights_file({'params': state}, dst, fmt)
    meta = {k: ckpt[k] for k in ('epoch', 'best_psnr') if isinstance(ckpt, dict) and k in ckpt}
    return {'src': src, 'dst': dst, 'type': arch, **opt, 'num_params': sum(p.numel() for p in net.parameters()),
            **{k: float(v) for k, v in meta.items()}}


def main(argv=None):
    args = parse_args(argv)
    fmt = args.format or ('safetensors' if args.output.lower().endswith('.safetensors') else 'pth')
    print(json.dumps(convert(args.input, args.output, args.arch, args.variant, args.overwrite, fmt,
                             args.allow_unsafe_pickle)))


if __name__ == '__main__':
    main()
