"""Command line of ``mixcl-dehaze`` / ``python -m mixcl_arch.dehaze`` (:mod:`mixcl_arch.dehaze`).

Kept apart from the CLI so that ``--help`` and argument errors are answered before torch is imported
(:func:`mixcl_arch_cli.cli_dehaze`): this module imports only the standard library. ``--ext`` alone is checked against
:data:`mixcl_arch.utils.image_io.IMG_EXTENSIONS`, imported when it is given.
"""
import argparse

from mixcl_arch.methods import METHODS


def _image_extensions():
    from mixcl_arch.utils.image_io import IMG_EXTENSIONS
    return IMG_EXTENSIONS


def parse_args(argv=None):
    """Parse the command line (``argv`` without the program name; None -> ``sys.argv[1:]``)."""
    p = argparse.ArgumentParser(
        prog='mixcl-dehaze',
        description='Dehaze images with MixCLDehazeNet / MixDehazeNet / CLIPHazeNet (or a baseline). See '
        'docs/inference.md.')
    p.add_argument('-i', '--input', required=True, help='image file or folder')
    p.add_argument('-o', '--output', required=True,
                   help='output folder (or an output file name when the input is one file)')
    p.add_argument('--weights', help='network checkpoint (BasicSR params/params_ema or official state_dict file)')
    p.add_argument('--opt', help='train/test options YAML: network_g builds the net; conditioning:, clip: and '
                   'cliphaze_cond: configure its conditioning (the flags below override single keys)')
    p.add_argument('--method', default='net', choices=METHODS,
                   help='net (default) = trained network; others are baselines')
    p.add_argument('--param', action='append', default=[], metavar='KEY=VALUE',
                   help='option of a baseline method (repeatable), e.g. --method dcp --param omega=0.9')
    p.add_argument('--param-key', default=None, help='weights key (default: params_ema, then params, then state_dict)')
    p.add_argument('--allow-unsafe-pickle', action='store_true',
                   help='fully unpickle a legacy --weights file that torch.load(weights_only=True) refuses. DANGEROUS: '
                   'unpickling can execute arbitrary code; only for files you trust (see README "Safety")')
    p.add_argument('--device', default='auto', help='auto (default: CUDA when available), cpu, cuda or cuda:N')
    amp = p.add_mutually_exclusive_group()
    amp.add_argument('--fp16', action='store_true', help='float16 autocast (meant for CUDA; works on CPU too)')
    amp.add_argument('--bf16', action='store_true', help='bfloat16 autocast')
    p.add_argument('--tile', type=int, default=512, help='tile size for large images (default 512); 0 disables tiling')
    p.add_argument('--tile-overlap', type=int, default=32, help='overlap of neighbouring tiles in pixels (default 32)')
    p.add_argument('--backend', default='auto', choices=('auto', 'torch', 'onnxruntime'),
                   help='network runtime: onnxruntime (CPU, float32; the net is exported to ONNX on first use and '
                   'cached in ~/.cache/mixcl_arch/onnx or $MIXCL_ONNX_CACHE) or torch. auto (default): onnxruntime '
                   "on the CPU when installed (pip install 'mixcl_arch[onnx]'; 1.9-3.2x faster, docs/export.md), "
                   'else torch')
    p.add_argument('--clip-model', default=None, help='open_clip model name (overrides clip.model)')
    p.add_argument('--clip-pretrained', default=None,
                   help='CLIP weights: open_clip tag or local file (overrides clip.pretrained)')
    p.add_argument('--clip-torchscript', action='store_true',
                   help='the CLIP weights file is a TorchScript archive such as OpenAI\'s ViT-B-32.pt (sets '
                   'clip.torchscript; TorchScript is code: only for files you trust)')
    p.add_argument('--cond-mode', default=None, choices=('hard', 'soft'),
                   help='primary CLIP conditioning vector (overrides conditioning.mode of the YAML, default hard)')
    p.add_argument('--cond-extra', nargs='+', default=None, metavar='ENTRY',
                   help='extra conditioning vectors of a num_cond > 1 net, e.g. image (overrides conditioning.extra)')
    p.add_argument('--cond-fallback', default=None,
                   help='when CLIP weights are missing: error, none (zero conditioning) or a domain name such as '
                   'outdoor/indoor (needs --feature-store); overrides conditioning.fallback of the YAML (default '
                   'error)')
    p.add_argument('--feature-store', default=None,
                   help='feature store file with per-domain text features (overrides conditioning.store)')
    p.add_argument('--density-source', default=None, choices=('clip', 'dcp'),
                   help='CLIPHazeNet: haze-density map from CLIP (zero-shot, needs the CLIP weights) or dcp (1 - t of '
                   'the dark channel prior: the offline stand-in, NOT CLIP); overrides cliphaze_cond.density_source '
                   'of the YAML (default clip)')
    p.add_argument('--standin-domain', default=None,
                   help='CLIPHazeNet with the stand-in embedding (the default of --density-source dcp): the domain '
                   'label of the images, e.g. indoor or outdoor (overrides cliphaze_cond.standin_domain)')
    p.add_argument('--compare', action='store_true', help='also save input | output side by side under OUT/compare')
    p.add_argument('--save-maps', action='store_true',
                   help='--method dcp: also save the dark channel, the transmission and the depth heat map of each '
                   'image as OUT/maps/<name>_{dark,transmission,depth}.png (see docs/baselines.md)')
    p.add_argument('--overwrite', action='store_true', help='replace existing outputs (default: skip them)')
    p.add_argument('--suffix', default='', help='appended to output file stems, e.g. _dehazed')
    p.add_argument('--ext', default='auto',
                   help='output format: auto (default: keep the input format; PNG when it cannot hold 16 bits or '
                   'alpha), png, jpg, webp, tif')
    p.add_argument('--alpha', default='keep', choices=('keep', 'drop'),
                   help='alpha channel of RGBA inputs: keep (default, copied unchanged) or drop')
    p.add_argument('--quality', type=int, default=95, help='JPEG/WebP quality (default 95)')
    p.add_argument('--recursive', action='store_true', help='also process sub-folders')
    p.add_argument('--max-pixels', type=int, default=None,
                   help='skip images whose header declares more pixels (default 200000000 or $MIXCL_MAX_PIXELS)')
    args = p.parse_args(argv)
    if args.max_pixels is not None and args.max_pixels < 1:
        p.error(f'--max-pixels must be a positive pixel count, got {args.max_pixels}')
    if args.tile < 0 or args.tile_overlap < 0 or (args.tile and args.tile_overlap >= args.tile):
        p.error(f'need --tile 0 (off) or --tile > --tile-overlap >= 0, got {args.tile} and {args.tile_overlap}')
    if args.ext != 'auto' and '.' + args.ext.lower().lstrip('.') not in _image_extensions():
        p.error(f'--ext {args.ext}: use auto or one of {", ".join(e[1:] for e in _image_extensions())}')
    if args.method == 'net' and not args.weights and not args.opt:
        p.error('--method net needs --weights (or --opt with path.pretrain_network_g)')
    if args.save_maps and args.method != 'dcp':
        p.error(f'--save-maps writes the dark channel prior\'s intermediate maps and needs --method dcp; '
                f'--method {args.method} has no such maps')
    if (args.density_source or args.standin_domain) and args.method != 'net':
        p.error(f'--density-source / --standin-domain set the conditioning of a CLIPHazeNet (--method net); '
                f'--method {args.method} takes none')
    if args.param and args.method in ('net', 'hazy'):
        p.error(f'--param sets baseline options (dcp, dehazenet); --method {args.method} takes none')
    bad = [kv for kv in args.param if '=' not in kv or not kv.split('=', 1)[0]]
    if bad:
        p.error(f'--param needs KEY=VALUE, got {bad}')
    return args
