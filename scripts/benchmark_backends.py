"""CPU inference speed of the two backends side by side: torch eager against ONNX Runtime.

For each network (MixCLDehazeNet-S and MixDehazeNet-S by default, random weights: speed does not depend on them) the
net is exported once with ``mixcl_arch.export`` (the graph ``scripts/export.py`` writes) and both backends run the
same whole image (no tiling, batch 1) at every size:

- ``torch``: ``net(x[, cond])`` in eval mode under ``torch.no_grad()``, as ``mixcl-dehaze`` runs it;
- ``onnxruntime``: the exported ONNX model in an ONNX Runtime CPU session (graph optimisations on).

Both use ``--threads`` threads (torch intra-op threads and ONNX Runtime ``intra_op_num_threads``). The median of
``--iters`` timed runs after ``--warmup`` runs (the backends take turns) gives images/s; the JSON printed at the end
holds, per network and size, both rates, ``onnxruntime_over_torch`` (> 1: ONNX Runtime is faster) and the largest
output difference.

Examples:
    python scripts/benchmark_backends.py                               # 512 and 1024, S nets, all CPU threads
    python scripts/benchmark_backends.py --threads 1 --sizes 512 --out bench_backends.json
"""
import argparse
import json
import os
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))
sys.path.insert(0, ROOT)

NETS = {
    'MixCLDehazeNet-S': {'type': 'MixCLDehazeNet', 'variant': 'S', 'data_range': 'unit'},
    'MixDehazeNet-S': {'type': 'MixDehazeNet', 'variant': 'S', 'data_range': 'unit'},
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--nets', nargs='+', default=list(NETS), choices=list(NETS), help='networks to measure')
    p.add_argument('--sizes', type=int, nargs='+', default=[512, 1024], help='square image sides in pixels')
    p.add_argument('--threads', type=int, default=None, help='CPU threads of both backends (default: all cores)')
    p.add_argument('--warmup', type=int, default=1, help='untimed runs per backend and size (default 1)')
    p.add_argument('--iters', type=int, default=3, help='timed runs per backend and size; median kept (default 3)')
    p.add_argument('--out', default=None, help='also write the JSON to this file')
    args = p.parse_args(argv)
    if min(args.sizes) < 1 or args.iters < 1 or args.warmup < 0 or (args.threads is not None and args.threads < 1):
        p.error('--sizes and --iters must be >= 1, --warmup >= 0, --threads >= 1')
    return args


def median_seconds(fns, warmup, iters):
    """Median wall time of each function over ``iters`` runs after ``warmup`` runs, and their last outputs.

    The functions take turns within every iteration, so that load from other processes on a shared machine hits
    all of them alike and the ratios stay meaningful.
    """
    times = [[] for _ in fns]
    outs = [None] * len(fns)
    for it in range(warmup + iters):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            outs[i] = fn()
            if it >= warmup:
                times[i].append(time.perf_counter() - start)
    return [sorted(t)[len(t) // 2] for t in times], outs


def bench_net(name, args, tmp):
    """Export ``name`` and time both backends at every size; returns one JSON row per size."""
    import torch
    from basicsr.archs import build_network

    from mixcl_arch.export import OnnxRuntimeRunner, export_metadata, export_program, max_abs_diff, save_onnx
    torch.manual_seed(0)
    net = build_network(dict(NETS[name])).eval()
    start = time.perf_counter()
    path = os.path.join(tmp, name + '.onnx')
    save_onnx(export_program(net), path, export_metadata(net, NETS[name]))
    export_s = time.perf_counter() - start
    runner = OnnxRuntimeRunner(path, threads=args.threads)
    rows = []
    for size in args.sizes:
        x = torch.rand(1, 3, size, size)
        extra = (torch.nn.functional.normalize(torch.randn(1, net.num_cond, net.cond_dim), dim=-1), ) \
            if net.num_cond else ()
        with torch.no_grad():
            (torch_s, ort_s), (ref, out) = median_seconds([lambda: net(x, *extra), lambda: runner.run(x, *extra)],
                                                          args.warmup, args.iters)
        rows.append({'net': name, 'size': f'{size}x{size}', 'torch_img_per_s': round(1 / torch_s, 4),
                     'onnxruntime_img_per_s': round(1 / ort_s, 4), 'onnxruntime_over_torch': round(torch_s / ort_s, 3),
                     'max_abs_diff': max_abs_diff(ref, out)})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows, round(export_s, 1)


def main(argv=None):
    args = parse_args(argv)
    import onnxruntime
    import torch

    import mixcl_arch  # noqa: F401  (before basicsr: see mixcl_arch/compat.py)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.threads = torch.get_num_threads()
    result = {'device': 'cpu', 'threads': args.threads, 'cpu_count': os.cpu_count(), 'torch': torch.__version__,
              'onnxruntime': onnxruntime.__version__, 'batch': 1, 'tile': None, 'iters': args.iters, 'results': [],
              'export_seconds': {}}
    with tempfile.TemporaryDirectory(prefix='bench_backends_') as tmp:
        for name in args.nets:
            rows, result['export_seconds'][name] = bench_net(name, args, tmp)
            result['results'] += rows
    ratios = [r['onnxruntime_over_torch'] for r in result['results']]
    result['faster_on_cpu'] = 'onnxruntime' if min(ratios) > 1 else 'torch' if max(ratios) < 1 else 'mixed'
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        from mixcl_arch.utils.file_io import atomic_write_text
        atomic_write_text(text + '\n', args.out)
    return 0


if __name__ == '__main__':
    sys.exit(main())
