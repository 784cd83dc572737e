"""CLIPHazeNet measurements on CPU; prints one JSON object.

Sections (``--what``, default all):
- ``scan``: the pure-PyTorch chunked selective scan against the naive per-position loop
  (``selective_scan_naive``), forward and forward+backward CPU seconds, at ``--scan-length`` (default 4096 = a 64x64
  map), with the shape of one SS2D direction of the S preset at level 1 (batch 1, D = 64, N = 16); also the max
  difference.
- ``macs``: parameters and MACs (``mixcl_arch.utils.flops.count_macs``, flop_counter) of T/S/B at ``--macs-size``;
  the scan's elementwise recurrence is not a matmul, so it is listed apart (``scan_state_updates``: one
  multiply-add per state, channel, position and direction).
- ``infer``: one eval forward of ``--infer-variant`` (S) at ``--infer-size`` (1024) with random density and
  embedding, in a fresh subprocess: wall and CPU seconds, peak RSS (``ru_maxrss``, the whole process) and its growth.
- ``train``: training img/s (forward + L1 loss + backward + AdamW step on random data, after warm-up) of
  CLIPHazeNet-T and MixCLDehazeNet-T at the same ``--crop`` and ``--batch``, each in a fresh subprocess; per CPU
  second (the fair figure with 1 thread on a shared machine) and per wall second.

Every subprocess runs with ``--threads`` torch threads (default 1).

Examples:
    python scripts/benchmark_cliphaze.py --what scan macs
    python scripts/benchmark_cliphaze.py --what infer --infer-size 1024
    python scripts/benchmark_cliphaze.py --what train --crop 64 --batch 4 --steps 5
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))
sys.path.insert(0, ROOT)

SECTIONS = ('scan', 'macs', 'infer', 'train')


def _timed(fn, repeats, clock=time.perf_counter):
    fn()  # warm-up
    t0 = clock()
    for _ in range(repeats):
        fn()
    return (clock() - t0) / repeats


def bench_scan(length, repeats):
    import torch

    from mixcl_arch.ops.selective_scan import selective_scan, selective_scan_naive
    g = torch.Generator().manual_seed(0)
    dm, n = 64, 16
    inp = dict(u=torch.randn(1, dm, length, generator=g), delta=torch.randn(1, dm, length, generator=g),
               A=-torch.arange(1., n + 1).repeat(dm, 1), B=torch.randn(1, n, length, generator=g),
               C=torch.randn(1, n, length, generator=g), D=torch.ones(dm), delta_bias=torch.full((dm, ), -4.0))
    leaves = ('u', 'delta', 'B', 'C')
    out = {'length': length, 'batch': 1, 'channels': dm, 'd_state': n}
    for name, fn in (('chunked', lambda **kw: selective_scan(**kw, impl='torch')), ('naive', selective_scan_naive)):

        def forward(fn=fn):
            with torch.no_grad():
                return fn(**inp, delta_softplus=True)

        def train_step(fn=fn):
            args = {k: (v.clone().requires_grad_() if k in leaves else v) for k, v in inp.items()}
            fn(**args, delta_softplus=True).square().mean().backward()

        # CPU seconds: wall time on a shared machine counts the other jobs
        out[f'{name}_forward_cpu_s'] = round(_timed(forward, repeats, clock=time.process_time), 4)
        out[f'{name}_forward_backward_cpu_s'] = round(_timed(train_step, repeats, clock=time.process_time), 4)
    out['speedup_forward'] = round(out['naive_forward_cpu_s'] / out['chunked_forward_cpu_s'], 1)
    out['speedup_forward_backward'] = round(out['naive_forward_backward_cpu_s'] / out['chunked_forward_backward_cpu_s'],
                                            1)
    with torch.no_grad():
        ref = selective_scan_naive(**inp, delta_softplus=True)
        out['max_abs_diff'] = float((selective_scan(**inp, delta_softplus=True, impl='torch') - ref).abs().max())
    return out


def conditioned(net, batch, size, embed_dim=512):
    """Random (density, embedding) for ``net`` at ``size``, and a module taking only the image (for count_macs)."""
    import torch
    density = torch.rand(batch, 1, size // 8, size // 8)
    embedding = torch.nn.functional.normalize(torch.randn(batch, embed_dim), dim=-1)

    class WithConditioning(torch.nn.Module):

        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net(x, density, embedding)

    return density, embedding, WithConditioning()


def bench_macs(size):
    from mixcl_arch.archs.cliphaze_arch import CLIPHazeNet
    from mixcl_arch.utils.flops import count_macs, format_count
    rows = {}
    for variant in ('T', 'S', 'B'):
        net = CLIPHazeNet(variant, scan_impl='torch')
        cfg = net.cfg
        _, _, wrapped = conditioned(net, 1, size)
        macs = count_macs(wrapped, (1, 3, size, size))
        depths = [cfg.depths[i] + cfg.decoder_depths[i] for i in range(3)] + [cfg.bottleneck_depth]
        # per block: 4 directions x d_inner (= expand * width at that level) x positions x d_state
        updates = sum(d * 4 * cfg.expand * cfg.width * 2**i * (size // 2**i)**2 * cfg.d_state
                      for i, d in enumerate(depths))
        params = sum(p.numel() for p in net.parameters())
        rows[variant] = {'width': cfg.width, 'params': params, 'params_h': format_count(params),
                         'macs': macs, 'macs_h': format_count(macs), 'scan_state_updates': updates,
                         'scan_state_updates_h': format_count(updates)}
    return {'size': size, 'presets': rows}


def worker_infer(variant, size):
    import torch

    from mixcl_arch.archs.cliphaze_arch import CLIPHazeNet
    torch.manual_seed(0)
    net = CLIPHazeNet(variant, scan_impl='torch').eval()
    x = torch.rand(1, 3, size, size)
    density, embedding, _ = conditioned(net, 1, size)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t0, c0 = time.perf_counter(), time.process_time()
    with torch.no_grad():
        y = net(x, density, embedding)
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {'model': f'CLIPHazeNet-{variant}', 'size': size, 'seconds': round(seconds, 2),
            'cpu_seconds': round(cpu_seconds, 2),
            'peak_rss_mib': round(peak / 2**20, 1), 'peak_rss_growth_mib': round((peak - base) / 2**20, 1),
            'finite': bool(torch.isfinite(y).all())}


def worker_train(arch, crop, batch, steps):
    import torch

    from mixcl_arch.archs.cliphaze_arch import CLIPHazeNet
    from mixcl_arch.archs.mixdehazenet_arch import MixCLDehazeNet
    torch.manual_seed(0)
    x, gt = torch.rand(batch, 3, crop, crop), torch.rand(batch, 3, crop, crop)
    if arch == 'CLIPHazeNet-T':
        net = CLIPHazeNet('T', scan_impl='torch')
        density, embedding, _ = conditioned(net, batch, crop)
        args = (x, density, embedding)
    else:
        net = MixCLDehazeNet('T', data_range='unit')
        args = (x, torch.nn.functional.normalize(torch.randn(batch, 512), dim=-1))
    net.train()
    optim = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-4)

    def step():
        optim.zero_grad(set_to_none=True)
        torch.nn.functional.l1_loss(net(*args), gt).backward()
        optim.step()

    wall = time.perf_counter()
    cpu_seconds = _timed(step, steps, clock=time.process_time)
    wall = (time.perf_counter() - wall) / (steps + 1)
    # per CPU second (with 1 thread the fair number on a shared machine, where wall time includes other jobs)
    return {'model': arch, 'crop': crop, 'batch': batch, 'steps': steps, 'cpu_seconds_per_step': round(cpu_seconds, 3),
            'wall_seconds_per_step': round(wall, 3), 'img_per_cpu_s': round(batch / cpu_seconds, 2),
            'img_per_wall_s': round(batch / wall, 2)}


def run_worker(argv, threads):
    cmd = [sys.executable, os.path.abspath(__file__), '--threads', str(threads)] + argv
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        return {'error': (out.stderr.strip().splitlines() or ['failed'])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--what', nargs='+', choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument('--threads', type=int, default=1, help='torch threads in every measurement (default 1)')
    parser.add_argument('--scan-length', type=int, default=4096)
    parser.add_argument('--repeats', type=int, default=3, help='timed repeats of the scan measurements')
    parser.add_argument('--macs-size', type=int, default=256)
    parser.add_argument('--infer-variant', default='S')
    parser.add_argument('--infer-size', type=int, default=1024)
    parser.add_argument('--crop', type=int, default=64)
    parser.add_argument('--batch', type=int, default=4)
    parser.add_argument('--steps', type=int, default=5, help='timed training steps (after one warm-up step)')
    parser.add_argument('--worker', nargs='+', help=argparse.SUPPRESS)
    args = parser.parse_args()

    import torch
    torch.set_num_threads(args.threads)
    import mixcl_arch  # noqa: F401  (registers the archs, patches basicsr)
    if args.worker:
        kind, rest = args.worker[0], args.worker[1:]
        result = worker_infer(rest[0], int(rest[1])) if kind == 'infer' else worker_train(
            rest[0], int(rest[1]), int(rest[2]), int(rest[3]))
        print(json.dumps(result))
        return

    report = {'threads': args.threads, 'torch': torch.__version__, 'device': 'cpu'}
    if 'scan' in args.what:
        report['scan'] = bench_scan(args.scan_length, args.repeats)
    if 'macs' in args.what:
        report['macs'] = bench_macs(args.macs_size)
    if 'infer' in args.what:
        report['infer'] = run_worker(['--worker', 'infer', args.infer_variant, str(args.infer_size)], args.threads)
    if 'train' in args.what:
        rows = [
            run_worker(['--worker', 'train', arch, str(args.crop), str(args.batch), str(args.steps)], args.threads)
            for arch in ('CLIPHazeNet-T', 'MixCLDehazeNet-T')
        ]
        report['train'] = rows
        if all('img_per_cpu_s' in r for r in rows):
            report['train_ratio_cliphaze_over_mixcl'] = round(rows[0]['img_per_cpu_s'] / rows[1]['img_per_cpu_s'], 3)
    print(json.dumps(report, indent=1))


if __name__ == '__main__':
    main()
