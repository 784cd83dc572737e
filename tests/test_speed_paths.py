"""The fast path on CPU: benchmark script smoke run, fast inference vs eager fp32, fast-path training options."""
import json
import os
import subprocess
import sys

import torch

from mixcl_arch.archs.mixdehazenet_arch import MixCLDehazeNet
from mixcl_arch.utils.tiling import tiled_forward

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))


def test_benchmark_speed_quick_on_cpu_prints_ratios():
    out = subprocess.run([sys.executable, os.path.join(ROOT, 'scripts', 'benchmark_speed.py'), '--device', 'cpu',
                          '--quick'], capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout)
    train = report['train']
    assert train['reference']['img_per_s'] > 0 and train['fast']['img_per_s'] > 0, train
    assert train['fast']['amp'] == 'bf16' and train['reference']['amp'] is None
    assert train['img_per_s_ratio'] > 0
    for backend in ('lmdb', 'disk'):
        assert report['data'][backend]['img_per_s'] > 0 and report['data'][backend]['workers'] == 1, report['data']
    rows = {r['size']: r for r in report['infer']}
    assert set(rows) == {'64', '96x80'}
    assert rows['96x80']['fast']['tile'] == 64 and rows['64']['fast']['tile'] is None
    for row in rows.values():
        assert row['latency_ratio'] > 0
        assert abs(row['fast']['out_mean'] - row['eager_fp32']['out_mean']) < 5e-3


def test_fast_inference_matches_eager_fp32():
    """BN folding + bf16 autocast + tiling stays within bf16 precision of the eager fp32 output."""
    torch.manual_seed(0)
    net = MixCLDehazeNet(embed_dims=[8, 16, 16, 16, 8], depths=[1] * 5, data_range='unit').eval()
    x = torch.rand(1, 3, 72, 88)
    text = torch.nn.functional.normalize(torch.randn(1, 512), dim=-1)
    with torch.no_grad():
        ref = net(x, text)
        net.fuse_for_inference()
        with torch.autocast('cpu', dtype=torch.bfloat16):
            fast = tiled_forward(lambda t: net(t, text).float(), x, tile=48, overlap=16, align=4)
    mse = torch.mean((fast.clamp(0, 1) - ref.clamp(0, 1))**2)
    psnr = 10 * torch.log10(1 / mse)
    assert psnr > 35, f'fast path deviates from fp32: {psnr:.1f} dB'
