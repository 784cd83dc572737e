"""The fast paths on CPU, each checked so that it fails when the feature is switched off.

- BatchNorm folding: no ``norm1`` left, whole outputs within float32 rounding (BN statistics randomised);
- bf16 autocast (fast inference, tiled, and the CLI's ``--bf16``): every convolution really runs in bf16 (forward
  hooks), and the output differs from fp32 by more than float32 rounding but by less than bf16 rounding allows;
- ``scripts/benchmark_speed.py --quick`` runs end to end and leaves no temporary folders behind.
"""
import glob
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from _net_helpers import conv_output_dtypes, randomize_bn, unit_text
from mixcl_arch.archs.mixdehazenet_arch import MixCLDehazeNet
from mixcl_arch.dehaze import main as dehaze_main
from mixcl_arch.utils.tiling import tile_starts, tiled_forward

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))
TINY = dict(embed_dims=[8, 16, 16, 16, 8], depths=[1] * 5, data_range='unit')
FP32_EPS = torch.finfo(torch.float32).eps
BF16_EPS = torch.finfo(torch.bfloat16).eps

pytestmark = pytest.mark.usefixtures('one_thread')


def assert_bf16_difference(out, ref, scale):
    """``out`` (bf16 path) differs from the fp32 ``ref`` beyond fp32 rounding, within two bf16 ulps of ``scale``."""
    diff = (out.float() - ref).abs().max().item()
    assert diff > 16 * FP32_EPS * scale, f'no bf16 rounding visible (max diff {diff:.2e}): is autocast active?'
    assert diff <= 2 * BF16_EPS * scale, f'bf16 path deviates by {diff:.2e} > {2 * BF16_EPS * scale:.2e}'


@pytest.fixture()
def tiny_net():
    torch.manual_seed(0)
    return randomize_bn(MixCLDehazeNet(**TINY)).eval()


def test_fast_inference_folds_bn_runs_bf16_and_stays_within_bf16_precision(tiny_net):
    """BN folding + bf16 autocast (+ tiling) against the eager fp32 output, whole tensors."""
    x, text = torch.rand(1, 3, 72, 88), unit_text(1)
    with torch.no_grad():
        ref = tiny_net(x, text)
        scale = ref.abs().max().item()
        tiny_net.fuse_for_inference()
        folded = tiny_net(x, text)
        with conv_output_dtypes() as dtypes, torch.autocast('cpu', dtype=torch.bfloat16):
            fast = tiny_net(x, text)
        calls = []
        with conv_output_dtypes() as tiled_dtypes, torch.autocast('cpu', dtype=torch.bfloat16):
            tiled = tiled_forward(lambda t: calls.append(t.shape) or tiny_net(t, text).float(), x, tile=48,
                                  overlap=16, align=4)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) and n.endswith('norm1') for n, m in tiny_net.named_modules())
    assert (folded - ref).abs().max().item() <= 64 * FP32_EPS * scale
    assert dtypes and set(dtypes) == {torch.bfloat16}, set(dtypes)
    assert_bf16_difference(fast, ref, scale)
    assert len(calls) == len(tile_starts(72, 48, 16, 4)) * len(tile_starts(88, 48, 16, 4)) > 1
    assert set(tiled_dtypes) == {torch.bfloat16}
    assert_bf16_difference(tiled, ref, scale)


def _write_png16(path, rgb):
    assert cv2.imwrite(str(path), np.round(rgb[..., ::-1] * 65535).astype(np.uint16))


def _read_png16(path):
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert img.dtype == np.uint16
    return img[..., ::-1].astype(np.float64) / 65535


def test_cli_bf16_runs_the_network_in_bf16(tmp_path, tiny_net):
    """``--bf16`` must reach the network: convolutions in bf16, output off fp32 by bf16 rounding only (16-bit PNG)."""
    weights = tmp_path / 'net_g.pth'
    torch.save({'params': tiny_net.state_dict()}, weights)
    rng = np.random.default_rng(0)
    _write_png16(tmp_path / 'in.png', 0.3 + 0.5 * rng.random((44, 52, 3)))
    outs, seen = {}, {}
    for flag in ('fp32', 'bf16'):
        out = tmp_path / f'{flag}.png'
        args = ['-i', str(tmp_path / 'in.png'), '-o', str(out), '--weights', str(weights), '--cond-fallback', 'none',
                '--device', 'cpu'] + (['--bf16'] if flag == 'bf16' else [])
        with conv_output_dtypes() as dtypes:
            assert dehaze_main(args) == 0
        outs[flag], seen[flag] = _read_png16(out), set(dtypes)
    assert seen == {'fp32': {torch.float32}, 'bf16': {torch.bfloat16}}
    diff = np.abs(outs['bf16'] - outs['fp32']).max()
    assert 1 / 65535 <= diff <= 2 * BF16_EPS, diff


def test_benchmark_speed_quick_on_cpu_runs_and_cleans_up(tmp_path):
    tmp = tmp_path / 'tmp'
    tmp.mkdir()
    env = dict(os.environ, TMPDIR=str(tmp))
    out = subprocess.run([sys.executable, os.path.join(ROOT, 'scripts', 'benchmark_speed.py'), '--device', 'cpu',
                          '--quick'], capture_output=True, text=True, cwd=ROOT, env=env, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout)
    train = report['train']
    assert train['reference']['img_per_s'] > 0 and train['fast']['img_per_s'] > 0, train
    assert train['fast']['amp'] == 'bf16' and train['reference']['amp'] is None
    for backend in ('lmdb', 'disk'):
        assert report['data'][backend]['img_per_s'] > 0 and report['data'][backend]['workers'] == 1, report['data']
    rows = {r['size']: r for r in report['infer']}
    assert set(rows) == {'64', '96x80'}
    assert rows['96x80']['fast']['tile'] == 64 and rows['64']['fast']['tile'] is None
    assert all((row['latency_ratio'] or 0) > 0 for row in rows.values()), rows
    assert not glob.glob(str(tmp / 'bench_speed_*')), os.listdir(tmp)
