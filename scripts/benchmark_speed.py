"""Training and inference speed of MixCLDehazeNet: the reference recipe against the project's fast path, one run.

Every measurement runs in its own subprocess (clean peak-memory counters, no compile caches shared), on the same
device, and the script prints one JSON object with the ratios fast / reference.

Training (img/s over full optimizer steps through ``MixCLDehazeModel.optimize_parameters``, warm-up excluded; peak
memory):
- ``reference``: the original code's recipe: eager, NCHW, fp16 autocast + GradScaler (fp32 on CPU, where fp16
  autocast is not what anyone trains with);
- ``fast``: ``train.amp: bf16`` and ``train.compile: true`` (compile only on CUDA).

Data: img/s of the project's ``CLIPPairedImageDataset`` serving ``--crop`` crops with stored conditioning from LMDB
and from disk, through a DataLoader with ``--workers`` workers (``scripts/benchmark_data.py`` on generated data).

Inference (latency and peak memory per image):
- ``eager_fp32``: the network as trained, whole image;
- ``fast``: BatchNorm folded (``fuse_for_inference``), bf16 autocast, torch.compile on CUDA, tiles of ``--tile`` px
  for images larger than that.

Examples:
    python scripts/benchmark_speed.py --device cuda                       # full run (H100: S, batch 16, 256 crops)
    python scripts/benchmark_speed.py --device cpu --quick                # CI smoke sizes
"""
import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))
sys.path.insert(0, ROOT)


def parse_size(text):
    if 'x' in text:
        w, h = text.lower().split('x')
        return int(h), int(w)
    return int(text), int(text)


class PeakMemory:
    """Peak memory above the start of the block: CUDA allocator on GPU, process peak RSS growth on CPU."""

    def __init__(self, device):
        self.device = device
        self.peak_mib = None

    def __enter__(self):
        import torch
        if self.device.type == 'cuda':
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return self

    def __exit__(self, *exc):
        import torch
        if self.device.type == 'cuda':
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        self.peak_mib = round((peak - self.base) / 2**20, 1)
        return False


def sync(device):
    import torch
    if device.type == 'cuda':
        torch.cuda.synchronize()


def model_opt(args, recipe, device, tmp):
    """MixCLDehazeModel options of a training recipe; ``tmp`` (a temporary folder) stands in for every output path."""
    cuda = device.type == 'cuda'
    train = dict(
        optim_g=dict(type='AdamW', lr=1e-4, weight_decay=0, betas=[0.9, 0.999]),
        scheduler=dict(type='CosineAnnealingRestartLR', periods=[375000], restart_weights=[1], eta_min=1e-6),
        total_iter=375000, warmup_iter=-1, pixel_opt=dict(type='L1Loss', loss_weight=1.0, reduction='mean'))
    if recipe == 'reference':
        train['amp'] = 'fp16' if cuda else None
    else:
        train['amp'] = 'bf16'
        train['compile'] = bool(cuda and not args.no_compile)
    return dict(name='bench', model_type='MixCLDehazeModel', num_gpu=1 if cuda else 0, is_train=True, dist=False,
                rank=0, world_size=1, manual_seed=0, datasets={}, conditioning=dict(source='oracle'),
                network_g=dict(type='MixCLDehazeNet', variant=args.variant, data_range='unit'), train=train,
                path=dict(pretrain_network_g=None, strict_load_g=True, models=tmp, training_states=tmp,
                          visualization=tmp), val=dict(save_img=False))


def worker_train(args, recipe):
    import torch

    import mixcl_arch  # noqa: F401  (before basicsr: see mixcl_arch/compat.py)
    from basicsr.models import build_model
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True
    with tempfile.TemporaryDirectory(prefix='bench_speed_') as tmp:  # the model wants output paths; nothing is saved
        return _train_steps(args, build_model(model_opt(args, recipe, device, tmp)), recipe, device)


def _train_steps(args, model, recipe, device):
    """Warm-up, then ``args.iters`` timed optimizer steps of ``model`` on one fixed batch."""
    import torch
    b, s = args.batch, args.crop
    g = torch.Generator().manual_seed(0)
    gt = torch.rand(b, 3, s, s, generator=g)
    # the model's conditioner turns each image's domain label into its (unit-norm) stand-in text vector
    data = dict(lq=gt * 0.6 + 0.3, gt=gt, domain=['indoor', 'outdoor'] * (b // 2) + ['indoor'] * (b % 2))
    for i in range(args.warmup):
        model.feed_data(data)
        model.optimize_parameters(i + 1)
    sync(device)
    with PeakMemory(device) as mem:
        t0 = time.perf_counter()
        for i in range(args.iters):
            model.feed_data(data)
            model.optimize_parameters(args.warmup + i + 1)
        sync(device)
        dt = time.perf_counter() - t0
    result = {'recipe': recipe, 'amp': model.opt['train'].get('amp'),
              'compile': model.opt['train'].get('compile', False), 'img_per_s': round(b * args.iters / dt, 2),
              'peak_mib': mem.peak_mib, 'last_l_pix': model.log_dict['l_pix']}
    if args.profile:
        result['top_ops'] = profile_steps(model, data, device, steps=5, top=args.profile)
    return result


def profile_steps(model, data, device, steps=5, top=15):
    """torch.profiler over ``steps`` optimizer steps; the ``top`` ops by self device (else CPU) time."""
    from torch.profiler import ProfilerActivity, profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == 'cuda' else [])
    with profile(activities=activities) as prof:
        for i in range(steps):
            model.feed_data(data)
            model.optimize_parameters(10**6 + i)
        sync(device)
    key = 'self_device_time_total' if device.type == 'cuda' else 'self_cpu_time_total'
    events = sorted(prof.key_averages(), key=lambda e: getattr(e, key, 0), reverse=True)[:top]
    total = sum(getattr(e, key, 0) for e in prof.key_averages()) or 1
    return [{'op': e.key[:80], 'ms_per_step': round(getattr(e, key, 0) / 1000 / steps, 3),
             'share': round(getattr(e, key, 0) / total, 4), 'calls_per_step': e.count // steps} for e in events]


def worker_infer(args, variant, size):
    import torch

    import mixcl_arch  # noqa: F401
    from mixcl_arch.archs.mixdehazenet_arch import MixCLDehazeNet
    from mixcl_arch.utils.tiling import tiled_forward
    device = torch.device(args.device)
    torch.manual_seed(0)
    net = MixCLDehazeNet(args.variant, data_range='unit').to(device).eval()
    h, w = size
    x = torch.rand(1, 3, h, w, device=device)
    text = torch.nn.functional.normalize(torch.randn(1, 512, device=device), dim=-1)
    tile = None
    autocast = contextlib.nullcontext()
    fn = net
    if variant == 'fast':
        net.fuse_for_inference()
        autocast = torch.autocast(device.type, dtype=torch.bfloat16)
        if device.type == 'cuda' and not args.no_compile:
            fn = torch.compile(net, dynamic=False)
        tile = args.tile if max(h, w) > args.tile else None

    def run():
        with torch.no_grad(), autocast:
            return tiled_forward(lambda t: fn(t, text).float(), x, tile, args.tile_overlap, align=4)

    for _ in range(args.infer_warmup):
        run()
    sync(device)
    with PeakMemory(device) as mem:
        times = []
        for _ in range(args.infer_iters):
            t0 = time.perf_counter()
            y = run()
            sync(device)
            times.append(time.perf_counter() - t0)
    times.sort()
    return {'variant': variant, 'size': f'{w}x{h}', 'tile': tile, 'ms': round(1000 * times[len(times) // 2], 2),
            'peak_mib': mem.peak_mib, 'out_mean': float(y.mean())}


def run_data_benchmark(args):
    """The data loader alone, through scripts/benchmark_data.py (LMDB and disk, stored conditioning), as JSON."""
    cmd = [sys.executable, os.path.join(ROOT, 'scripts', 'benchmark_data.py'), '--images',
           str(max(8, min(64, args.data_images))), '--size', str(max(args.crop + 16, 64)), '--crop', str(args.crop),
           '--crops', str(args.data_images), '--batch', str(args.batch), '--workers', str(args.workers),
           '--vit-images', '0', '--device', args.device]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        err = (out.stderr or out.stdout).strip().splitlines()
        return {'error': err[-1] if err else f'exit {out.returncode}'}
    result = json.loads(out.stdout)
    return {row['backend']: row for row in result['dataset']}


def spawn(args, *worker):
    cmd = [sys.executable, os.path.abspath(__file__), '--worker', *worker] + args.passthrough
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    lines = out.stdout.strip().splitlines()
    if out.returncode != 0 or not lines:
        err = (out.stderr or out.stdout).strip().splitlines()
        return {'error': err[-1] if err else f'exit {out.returncode}'}
    return json.loads(lines[-1])


def ratio(a, b, key):
    try:
        return round(a[key] / b[key], 3)
    except (KeyError, TypeError, ZeroDivisionError):
        return None


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--device', default='auto', help='auto | cpu | cuda')
    parser.add_argument('--variant', default='S', help='MixCLDehazeNet preset')
    parser.add_argument('--batch', type=int, default=16)
    parser.add_argument('--crop', type=int, default=256)
    parser.add_argument('--iters', type=int, default=30)
    parser.add_argument('--warmup', type=int, default=10)
    parser.add_argument('--sizes', nargs='+', default=['256', '1024', '3840x2160'])
    parser.add_argument('--tile', type=int, default=1024)
    parser.add_argument('--tile-overlap', type=int, default=64)
    parser.add_argument('--infer-iters', type=int, default=5)
    parser.add_argument('--infer-warmup', type=int, default=2)
    parser.add_argument('--workers', type=int, default=8)
    parser.add_argument('--data-images', type=int, default=512)
    parser.add_argument('--no-compile', action='store_true')
    parser.add_argument('--profile', type=int, default=0, metavar='N',
                        help='also profile 5 training steps of each recipe and report the top N ops')
    parser.add_argument('--skip', nargs='*', default=[], choices=['train', 'data', 'infer'])
    parser.add_argument('--quick', action='store_true', help='tiny CPU sizes for CI smoke tests')
    parser.add_argument('--worker', nargs='+', help=argparse.SUPPRESS)
    args = parser.parse_args()

    import torch
    if args.device == 'auto':
        args.device = 'cuda' if torch.cuda.is_available() else 'cpu'
    if args.quick:
        args.variant, args.batch, args.crop, args.iters, args.warmup = 'T', 2, 64, 2, 1
        args.sizes, args.tile, args.tile_overlap = ['64', '96x80'], 64, 16
        args.infer_iters, args.infer_warmup, args.workers, args.data_images = 2, 1, 1, 8

    if args.worker:
        kind = args.worker[0]
        if kind == 'train':
            result = worker_train(args, args.worker[1])
        else:
            result = worker_infer(args, args.worker[1], parse_size(args.worker[2]))
        print(json.dumps(result))
        return

    args.passthrough = ['--device', args.device, '--variant', args.variant, '--batch', str(args.batch), '--crop',
                        str(args.crop), '--iters', str(args.iters), '--warmup', str(args.warmup), '--tile',
                        str(args.tile), '--tile-overlap', str(args.tile_overlap), '--infer-iters',
                        str(args.infer_iters), '--infer-warmup', str(args.infer_warmup), '--workers',
                        str(args.workers), '--data-images', str(args.data_images)] + \
        (['--no-compile'] if args.no_compile else []) + ['--profile', str(args.profile)]
    report = {'device': torch.cuda.get_device_name() if args.device.startswith('cuda') else 'cpu',
              'torch': torch.__version__, 'model': f'MixCLDehazeNet-{args.variant}', 'batch': args.batch,
              'crop': args.crop}
    if 'train' not in args.skip:
        ref, fast = spawn(args, 'train', 'reference'), spawn(args, 'train', 'fast')
        report['train'] = {'reference': ref, 'fast': fast, 'img_per_s_ratio': ratio(fast, ref, 'img_per_s'),
                           'peak_mem_ratio': ratio(fast, ref, 'peak_mib')}
    if 'data' not in args.skip:
        report['data'] = run_data_benchmark(args)
    if 'infer' not in args.skip:
        rows = []
        for size in args.sizes:
            eager = spawn(args, 'infer', 'eager_fp32', size)
            fast = spawn(args, 'infer', 'fast', size)
            rows.append({'size': size, 'eager_fp32': eager, 'fast': fast, 'latency_ratio': ratio(fast, eager, 'ms'),
                         'peak_mem_ratio': ratio(fast, eager, 'peak_mib')})
        report['infer'] = rows
    print(json.dumps(report, indent=1))


if __name__ == '__main__':
    main()
