#!/usr/bin/env python
"""Speed of the torch dark channel prior (mixcl_arch.baselines.dcp) vs a straightforward NumPy/OpenCV reference.

The reference below implements the same steps per channel the usual way (cv2.erode for the 15x15 min filter,
np.argpartition for the brightest 0.1% of the dark channel, cv2.boxFilter for the guided filter's means, with
unnormalised zero-padded sums divided by the window pixel count so that borders match the torch version exactly).
Both run on the same synthetic hazy image (skimage astronaut resized, constant haze) and their outputs are compared.

Prints JSON: per size, median milliseconds (after warm-up) for torch with 1 thread and with the default threads,
the reference with OpenCV on 1 thread and on its default threads, the ratios, and the max |J_torch - J_ref|.
``--device cuda`` adds torch timings on the GPU (CUDA synchronised). ``--check`` skips the timings and prints only
the output comparison (seconds at a small size; the tests run it).

    python scripts/benchmark_dcp.py                       # 1024x1024 and 620x460 (SOTS size class), CPU
    python scripts/benchmark_dcp.py --check --sizes 96x80 # outputs of torch vs the reference only
    python scripts/benchmark_dcp.py --device cuda --sizes 1024x1024
"""
import argparse
import dataclasses
import json
import os.path as osp
import platform
import statistics
import sys
import time


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--sizes', default='1024x1024,620x460', help='comma-separated WxH list')
    p.add_argument('--repeats', type=int, default=7)
    p.add_argument('--device', default='cpu', help="also time on this device when it is 'cuda' / 'cuda:N'")
    p.add_argument('--check', action='store_true', help='compare the outputs only, no timings')
    return p.parse_args(argv)


if __name__ == '__main__':
    parse_args()  # --help and usage errors answer here, before the imports below (torch and basicsr take seconds)

import cv2  # noqa: E402
import numpy as np  # noqa: E402

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)
import mixcl_arch  # noqa: E402,F401
import torch  # noqa: E402

from mixcl_arch.baselines.dcp import DCPParams, dcp_dehaze  # noqa: E402


# ---------------------------------------------------------------------------------------------------------------
# reference: NumPy / OpenCV, one channel at a time
# ---------------------------------------------------------------------------------------------------------------
def _box_mean_ref(x, r, n):
    s = cv2.boxFilter(x, -1, (2 * r + 1, 2 * r + 1), normalize=False, borderType=cv2.BORDER_CONSTANT)
    return s / n


def _dark_ref(img, r):
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (2 * r + 1, 2 * r + 1))
    # cv2.erode's default border value is +max, i.e. out-of-image pixels are ignored
    return cv2.erode(np.min(img, axis=2), kernel)


def dcp_reference(img, patch_radius=7, omega=0.95, top_ratio=0.001, gf_radius=60, gf_eps=1e-4, t0=0.1, a_min=1e-3):
    """DCP of an (H, W, 3) float32 RGB image in [0, 1] with NumPy/OpenCV; returns (J, A)."""
    h, w, _ = img.shape
    dark = _dark_ref(img, patch_radius)
    k = max(1, int(h * w * top_ratio))
    idx = np.argpartition(dark.ravel(), -k)[-k:]
    flat = img.reshape(-1, 3)
    cand = flat[idx]
    A = cand[np.argmax(cand.sum(axis=1))]
    norm = np.empty_like(img)
    for c in range(3):
        norm[..., c] = img[..., c] / max(A[c], a_min)
    t = 1.0 - omega * _dark_ref(norm, patch_radius)
    grey = (0.299 * img[..., 0] + 0.587 * img[..., 1] + 0.114 * img[..., 2]).astype(np.float32)
    n = cv2.boxFilter(np.ones((h, w), np.float32), -1, (2 * gf_radius + 1, 2 * gf_radius + 1), normalize=False,
                      borderType=cv2.BORDER_CONSTANT)
    mean_i = _box_mean_ref(grey, gf_radius, n)
    mean_p = _box_mean_ref(t, gf_radius, n)
    cov_ip = _box_mean_ref(grey * t, gf_radius, n) - mean_i * mean_p
    var_i = _box_mean_ref(grey * grey, gf_radius, n) - mean_i * mean_i
    a = cov_ip / (var_i + gf_eps)
    b = mean_p - a * mean_i
    t = np.clip(_box_mean_ref(a, gf_radius, n) * grey + _box_mean_ref(b, gf_radius, n), 0, 1)
    t = np.maximum(t, t0)
    J = np.empty_like(img)
    for c in range(3):
        J[..., c] = (img[..., c] - A[c]) / t + A[c]
    return np.clip(J, 0, 1), A


# ---------------------------------------------------------------------------------------------------------------
def make_hazy(h, w, seed=0):
    """Synthetic hazy image (H, W, 3) float32: skimage astronaut resized, t from 0.3 to 0.9 top to bottom, A 0.9."""
    from skimage import data
    clear = cv2.resize(data.astronaut(), (w, h), interpolation=cv2.INTER_CUBIC).astype(np.float32) / 255
    t = np.linspace(0.3, 0.9, h, dtype=np.float32)[:, None, None]
    rng = np.random.default_rng(seed)
    hazy = clear * t + 0.9 * (1 - t) + rng.normal(0, 0.005, clear.shape).astype(np.float32)
    return np.clip(hazy, 0, 1).astype(np.float32)


def median_ms(fn, repeats, warmup=2, sync=None):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if sync:
            sync()
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def compare_outputs(img, params):
    """Max/mean |J_torch - J_ref| and max |A_torch - A_ref| of one (H, W, 3) float32 image.

    Below about 1000 pixels per brightest pixel kept (top_ratio 0.001), ties in the dark channel can make torch's topk
    and NumPy's argpartition keep different pixels, and A then differs; the sizes used here have no such tie.
    """
    x = torch.from_numpy(img.transpose(2, 0, 1)).unsqueeze(0).contiguous()
    with torch.no_grad():
        res = dcp_dehaze(x, params, return_all=True)
    j_torch = res['J'][0].numpy().transpose(1, 2, 0)
    j_ref, a_ref = dcp_reference(img)
    return {'max_abs_diff_J': float(np.abs(j_torch - j_ref).max()),
            'mean_abs_diff_J': float(np.abs(j_torch - j_ref).mean()),
            'max_abs_diff_A': float(np.abs(res['A'][0].numpy() - a_ref).max())}


def bench_size(h, w, repeats, device):
    img = make_hazy(h, w)
    x = torch.from_numpy(img.transpose(2, 0, 1)).unsqueeze(0).contiguous()
    params = DCPParams()
    out = {'size': f'{w}x{h}', 'pixels': h * w}
    default_threads = torch.get_num_threads()
    cv_threads = cv2.getNumThreads()
    with torch.no_grad():
        torch.set_num_threads(1)
        out['torch_cpu_1thread_ms'] = median_ms(lambda: dcp_dehaze(x, params), repeats)
        torch.set_num_threads(default_threads)
        out['torch_cpu_default_threads_ms'] = median_ms(lambda: dcp_dehaze(x, params), repeats)
        cv2.setNumThreads(1)
        out['reference_cv_1thread_ms'] = median_ms(lambda: dcp_reference(img), repeats)
        cv2.setNumThreads(cv_threads)
        out['reference_cv_default_threads_ms'] = median_ms(lambda: dcp_reference(img), repeats)
        out.update(compare_outputs(img, params))
        out['ratio_1thread_ref_over_torch'] = out['reference_cv_1thread_ms'] / out['torch_cpu_1thread_ms']
        out['ratio_default_ref_over_torch'] = (out['reference_cv_default_threads_ms'] /
                                               out['torch_cpu_default_threads_ms'])
        if device.type == 'cuda':
            xc = x.to(device)
            out['torch_cuda_ms'] = median_ms(lambda: dcp_dehaze(xc, params), repeats, warmup=3,
                                             sync=torch.cuda.synchronize)
            diff = dcp_dehaze(xc, params).cpu() - dcp_dehaze(x, params)
            out['max_abs_diff_J_cuda_vs_cpu'] = float(diff.abs().max())
    return out


def main(argv=None):
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise SystemExit('--device cuda given but CUDA is not available')
    sizes = []
    for s in args.sizes.split(','):
        try:
            w, h = (int(v) for v in s.lower().split('x'))
        except ValueError:
            raise SystemExit(f'--sizes: bad size {s!r}, expected WxH like 1024x1024') from None
        sizes.append((h, w))
    result = {
        'params': dataclasses.asdict(DCPParams()),
        'torch': torch.__version__, 'opencv': cv2.__version__, 'numpy': np.__version__,
        'cpu': platform.processor() or platform.machine(), 'torch_default_threads': torch.get_num_threads(),
        'opencv_default_threads': cv2.getNumThreads(),
        'cuda_device': torch.cuda.get_device_name(device) if device.type == 'cuda' else None,
        'results': [{'size': f'{w}x{h}', **compare_outputs(make_hazy(h, w), DCPParams())} if args.check else
                    bench_size(h, w, args.repeats, device) for h, w in sizes],
    }
    print(json.dumps(result, indent=2))
    return result


if __name__ == '__main__':
    main()
