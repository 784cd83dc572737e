"""Convert an original MixDehazeNet / MixCLDehazeNet checkpoint to BasicSR's ``{'params': ...}`` format.

The original code saves ``{'state_dict': {'module.xxx': ...}, 'optimizer': ..., 'epoch': ..., 'best_psnr': ...}``.
This script strips the DataParallel prefix, drops the optimizer, checks that the weights load strictly into the
matching mixcl_arch network (architecture inferred from the keys unless given) and writes the result atomically.

Example:
    python scripts/convert_official_checkpoint.py -i saved_models/indoor/MixDehazeNet-s.pth \
        -o experiments/pretrained_models/MixDehazeNet_S_ITS.pth
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir)))

from mixcl_arch.archs.mixdehazenet_arch import MixCLDehazeNet, MixDehazeNet  # noqa: E402
from mixcl_arch.utils.checkpoint import (atomic_torch_save, check_state_dict, extract_state_dict,  # noqa: E402
                                         infer_arch_from_state_dict, load_checkpoint_file)

ARCHS = {'MixDehazeNet': MixDehazeNet, 'MixCLDehazeNet': MixCLDehazeNet}


def convert(src, dst, arch=None, variant=None, overwrite=False):
    """Convert ``src`` to ``dst``; returns a summary dict. Raises ValueError if the weights do not fit strictly."""
    if os.path.exists(dst) and not overwrite:
        raise FileExistsError(f'{dst} exists; pass --overwrite to replace it.')
    ckpt = load_checkpoint_file(src)
    state = extract_state_dict(ckpt, 'state_dict', src)
    opt = infer_arch_from_state_dict(state)
    arch = arch or opt.pop('type')
    opt.pop('type', None)
    if variant:
        opt.pop('depths')
    net = ARCHS[arch](variant=variant, **opt)
    check_state_dict(net, state, src, strict=True)
    net.load_state_dict(state, strict=True)
    atomic_torch_save({'params': state}, dst)
    meta = {k: ckpt[k] for k in ('epoch', 'best_psnr') if isinstance(ckpt, dict) and k in ckpt}
    return {'src': src, 'dst': dst, 'type': arch, **opt, 'num_params': sum(p.numel() for p in net.parameters()),
            **{k: float(v) for k, v in meta.items()}}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('-i', '--input', required=True, help='official checkpoint (.pth/.pk)')
    parser.add_argument('-o', '--output', required=True, help='BasicSR-format output file')
    parser.add_argument('--arch', choices=sorted(ARCHS), default=None, help='default: inferred from the keys')
    parser.add_argument('--variant', choices=['T', 'S', 'B', 'L'], default=None, help='default: inferred depths')
    parser.add_argument('--overwrite', action='store_true')
    args = parser.parse_args(argv)
    print(json.dumps(convert(args.input, args.output, args.arch, args.variant, args.overwrite)))


if __name__ == '__main__':
    main()
