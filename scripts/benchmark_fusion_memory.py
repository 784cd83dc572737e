"""Peak memory of one eval forward: MixDehazeNet vs MixCLDehazeNet (lean fusion) vs an explicit-attention fusion.

The explicit variant recomputes the reference's (H*W) x 512 attention matrix (and nothing else changes), so the
three numbers show what the fusion costs. Each measurement runs in a fresh subprocess. On CUDA the peak is
``torch.cuda.max_memory_allocated`` above the model's resident memory; on CPU it is the growth of the process's peak
RSS (``ru_maxrss``) during the forward. Each row also gives the size of one float32 copy of the explicit attention
matrix, batch x (H*W) x 512 x 4 bytes (computed, not measured). Prints one JSON object.

``--check`` measures nothing: in one process it runs the network with the lean fusion and with the explicit one on
the same weights and input, and prints the max abs difference of the whole outputs (seconds at a small size).

Example:
    python scripts/benchmark_fusion_memory.py --sizes 256 512 --variant S
    python scripts/benchmark_fusion_memory.py --device cuda --sizes 1024
    python scripts/benchmark_fusion_memory.py --check --sizes 24 --variant T
"""
import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
from unittest import mock

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir)))

VARIANTS = ('plain', 'lean', 'explicit')


def explicit_fusion_forward(self, x, text):
    """The reference computation: an explicit (B, H*W, 512) attention matrix."""
    import torch
    b, _, h, w = x.shape
    p = self.proj_dim
    q = self.q1(x).view(b, p, -1).permute(0, 2, 1)
    k = self.k2(text[:, None]).permute(0, 2, 1)
    v = self.v2(text[:, None]).permute(0, 2, 1)
    attn = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(p), dim=-1)
    return self.postProj_s((attn @ v).permute(0, 2, 1).reshape(b, p, h, w))


def attention_matrix_mib(size, batch, text_dim=512):
    """MiB of one float32 (batch, size*size, text_dim) attention matrix of the explicit fusion."""
    return round(batch * size * size * text_dim * 4 / 2**20, 1)


def check(size, model_variant, device, batch):
    """Max abs difference of MixCLDehazeNet's output with the lean vs the explicit fusion (same weights, input)."""
    import torch

    import mixcl_arch  # noqa: F401
    from mixcl_arch.archs.mixdehazenet_arch import CLIPTextFusion, MixCLDehazeNet
    torch.manual_seed(0)
    net = MixCLDehazeNet(model_variant).to(device).eval()
    x = torch.rand(batch, 3, size, size, device=device) * 2 - 1
    text = torch.nn.functional.normalize(torch.randn(batch, 512, device=device), dim=-1)
    with torch.no_grad():
        lean = net(x, text)
        with mock.patch.object(CLIPTextFusion, 'forward', explicit_fusion_forward):
            explicit = net(x, text)
    return {'size': size, 'max_abs_diff_lean_vs_explicit': float((lean - explicit).abs().max()),
            'output_abs_max': float(lean.abs().max()), 'attention_matrix_mib': attention_matrix_mib(size, batch)}


def worker(variant, size, model_variant, device, batch):
    import torch

    import mixcl_arch  # noqa: F401
    from mixcl_arch.archs.mixdehazenet_arch import CLIPTextFusion, MixCLDehazeNet, MixDehazeNet
    torch.manual_seed(0)
    if variant == 'plain':
        net = MixDehazeNet(model_variant)
    else:
        net = MixCLDehazeNet(model_variant)
        if variant == 'explicit':
            CLIPTextFusion.forward = explicit_fusion_forward
    net = net.to(device).eval()
    x = torch.rand(batch, 3, size, size, device=device) * 2 - 1
    text = torch.nn.functional.normalize(torch.randn(batch, 512, device=device), dim=-1)
    args = (x, ) if variant == 'plain' else (x, text)
    cuda = device.startswith('cuda')
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t0 = time.perf_counter()
    with torch.no_grad():
        y = net(*args)
    if cuda:
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    return {'variant': variant, 'size': size, 'peak_mib': round(peak / 2**20, 1),
            'seconds': round(time.perf_counter() - t0, 3), 'out_mean': float(y.float().mean())}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--sizes', type=int, nargs='+', default=[256, 512])
    parser.add_argument('--variant', default='S', help='preset T/S/B/L')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--batch', type=int, default=1)
    parser.add_argument('--skip-explicit-above', type=int, default=1024,
                        help='skip the explicit-attention variant above this size (it needs H*W*512*4 bytes * ~3)')
    parser.add_argument('--check', action='store_true', help='compare lean and explicit outputs only, no memory')
    parser.add_argument('--worker', nargs=2, metavar=('VARIANT', 'SIZE'), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]), args.variant, args.device, args.batch)))
        return None
    if args.check:
        result = {'device': args.device, 'model': f'MixCLDehazeNet-{args.variant}', 'batch': args.batch,
                  'results': [check(size, args.variant, args.device, args.batch) for size in args.sizes]}
        print(json.dumps(result, indent=1))
        return result
    results = []
    for size in args.sizes:
        row = {'size': size, 'attention_matrix_mib': attention_matrix_mib(size, args.batch)}
        for variant in VARIANTS:
            if variant == 'explicit' and size > args.skip_explicit_above:
                continue
            cmd = [sys.executable, __file__, '--worker', variant, str(size), '--variant', args.variant, '--device',
                   args.device, '--batch', str(args.batch)]
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode != 0:
                row[variant] = {'error': out.stderr.strip().splitlines()[-1] if out.stderr else 'failed'}
                continue
            row[variant] = json.loads(out.stdout.strip().splitlines()[-1])
        ok = all(isinstance(row.get(v), dict) and 'peak_mib' in row[v] for v in ('plain', 'lean'))
        if ok:
            row['lean_over_plain'] = round(row['lean']['peak_mib'] / max(row['plain']['peak_mib'], 1e-6), 3)
            if isinstance(row.get('explicit'), dict) and 'peak_mib' in row['explicit']:
                row['explicit_over_plain'] = round(row['explicit']['peak_mib'] / max(row['plain']['peak_mib'], 1e-6), 3)
                row['out_mean_diff_lean_vs_explicit'] = abs(row['lean']['out_mean'] - row['explicit']['out_mean'])
        results.append(row)
    result = {'device': args.device, 'model': f'MixCLDehazeNet-{args.variant}', 'batch': args.batch, 'results': results}
    print(json.dumps(result, indent=1))
    return result


if __name__ == '__main__':
    main()
