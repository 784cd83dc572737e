#!/usr/bin/env python
"""Reproduce ``tests/data/reference_outputs.npz``: outputs of the ORIGINAL MixDehazeNet / MixCLDehazeNet code.

    python scripts/make_reference_fixture.py --mixdehazenet-repo PATH --mixcl-repo PATH [--out FILE]

PATH is a checkout of https://github.com/AmeryXiong/MixDehazeNet (resp. https://github.com/DanielHo-BS/MixCLDehazeNet)
or its bare git directory. Only ``models/MixDehazeNet.py`` of each is used: it is copied into a temporary folder
outside this repository, imported from there, and never stored here.

For each upstream file the T preset is built as upstream defines it (``MixDehazeNet_t()``: embed dims
[24, 48, 96, 48, 24], depths [1, 1, 2, 1, 1]; in the MixCLDehazeNet file the same function builds the text-fused
net), filled with :func:`deterministic_weights` (including non-trivial BatchNorm running statistics), put in eval
mode and run on a seeded 37x45 image in [-1, 1] (the upstream convention; the text input is a unit-norm (1, 1, 512)
vector, the shape upstream's loader gives one CLIP text feature).

Why the weights are not stored: a T checkpoint is 6.5 MB in fp32. The weights are instead a pure function of the
parameter names and shapes (:func:`deterministic_weights`, float64 arithmetic, no RNG whose stream could change
between library versions); ``tests/test_reference_outputs.py`` rebuilds them with this same function, writes them as
an official checkpoint (``{'state_dict': {'module.' + k: v}}``) and loads that through the project's loaders. The
fixture keeps only the uint8 input image, the text vector, the two outputs and their provenance (about 45 KB).
"""
import argparse
import hashlib
import importlib.util
import io
import json
import os
import os.path as osp
import subprocess
import sys
import tempfile
import zlib

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
DEFAULT_OUT = osp.join(ROOT, 'tests', 'data', 'reference_outputs.npz')
UPSTREAM_FILE = 'models/MixDehazeNet.py'
INPUT_SHAPE = (37, 45)  # odd sizes: both get upstream's reflect padding to a multiple of 4 (40 x 48)
TEXT_DIM = 512
SEED = 2024


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--mixdehazenet-repo', required=True, help='AmeryXiong/MixDehazeNet checkout or git dir')
    p.add_argument('--mixcl-repo', required=True, help='DanielHo-BS/MixCLDehazeNet checkout or git dir')
    p.add_argument('--out', default=DEFAULT_OUT, help='fixture file (.npz), default tests/data/reference_outputs.npz')
    return p.parse_args(argv)


if __name__ == '__main__':
    parse_args()  # --help and usage errors answer here, before the imports below (torch takes seconds)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402


def deterministic_uniform(numel, key, seed=SEED):
    """``numel`` values in (-1, 1) that depend only on ``key``, ``seed`` and the position (float64 hash).

    Returns:
        Tensor: (numel,) float64.
    """
    salt = zlib.crc32(f'{seed}:{key}'.encode()) % 100_003
    i = torch.arange(numel, dtype=torch.float64)
    return torch.frac(torch.sin(i * 12.9898 + salt * 78.233) * 43758.5453)


@torch.no_grad()
def deterministic_weights(net, seed=SEED):
    """Fill every parameter and BatchNorm buffer of ``net`` from its name and shape alone.

    Convolutions get U(-1, 1) / sqrt(fan_in) weights and biases (PyTorch's default init range); BatchNorm gets
    gamma in (0.5, 1.5), beta and running mean in (-0.5, 0.5) and running variance in (0.5, 1.5), so that eval mode
    really applies the statistics. Two nets with the same parameter names and shapes get identical values.

    Args:
        net (nn.Module): Network to fill in place.
        seed (int): Changes every value.

    Returns:
        nn.Module: ``net``.
    """
    for mod_name, module in net.named_modules():
        prefix = mod_name + '.' if mod_name else ''
        tensors = dict(module.named_parameters(recurse=False))
        if isinstance(module, nn.BatchNorm2d):
            tensors.update(running_mean=module.running_mean, running_var=module.running_var)
            offsets = {'weight': 1.0, 'bias': 0.0, 'running_mean': 0.0, 'running_var': 1.0}
            for name, tensor in tensors.items():
                u = deterministic_uniform(tensor.numel(), prefix + name, seed).view_as(tensor)
                tensor.copy_(offsets[name] + 0.5 * u)
        elif tensors:
            fan_in = module.weight[0].numel()
            for name, tensor in tensors.items():
                u = deterministic_uniform(tensor.numel(), prefix + name, seed).view_as(tensor)
                tensor.copy_(u / fan_in**0.5)
    return net


def fixture_inputs(seed=SEED):
    """The seeded inputs: a uint8 RGB image (3, H, W) and a unit-norm text vector (1, 1, 512) float32."""
    h, w = INPUT_SHAPE
    u = deterministic_uniform(3 * h * w, 'input', seed).view(1, 3, h, w)
    image = ((u + 1) * 127.5).round().to(torch.uint8)
    text = deterministic_uniform(TEXT_DIM, 'text', seed).view(1, 1, TEXT_DIM).float()
    return image, text / text.norm(dim=-1, keepdim=True)


def to_signed(image):
    """uint8 (B, 3, H, W) -> float32 in [-1, 1], the input range of the upstream code."""
    return image.float() / 255 * 2 - 1


def read_upstream_file(repo):
    """Source text and commit of ``models/MixDehazeNet.py`` in a checkout or bare git dir ``repo``."""
    path = osp.join(repo, UPSTREAM_FILE)
    git = ['git', '-C', repo] if osp.isfile(path) else ['git', f'--git-dir={repo}']
    try:
        commit = subprocess.run(git + ['rev-parse', 'HEAD'], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = 'unknown (not a git repository)'
    if osp.isfile(path):
        with open(path, encoding='utf-8') as f:
            return f.read(), commit
    try:
        return subprocess.run(git + ['show', f'HEAD:{UPSTREAM_FILE}'], capture_output=True, text=True,
                              check=True).stdout, commit
    except (OSError, subprocess.CalledProcessError) as err:
        raise SystemExit(f'error: {repo} has no {UPSTREAM_FILE} (neither a checkout nor a git dir holding it): '
                         f'{err}') from err


def import_upstream(source, module_name, folder):
    """Import upstream model source from ``folder`` (a temporary folder outside this repository)."""
    path = osp.join(folder, module_name + '.py')
    with open(path, 'w', encoding='utf-8') as f:
        f.write(source)
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@torch.no_grad()
def run_upstream(module, image, text=None):
    """Build upstream ``MixDehazeNet_t()``, fill it deterministically and run it in eval mode."""
    net = deterministic_weights(module.MixDehazeNet_t()).eval()
    x = to_signed(image)
    out = net(x) if text is None else net(x, text)
    if out.shape != x.shape or not torch.isfinite(out).all() or float(out.std()) < 1e-3:
        raise SystemExit(f'error: unexpected upstream output (shape {tuple(out.shape)}, std {float(out.std())}).')
    return out


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(1)
    image, text = fixture_inputs()
    outputs, provenance = {}, {'seed': SEED, 'input_shape': list(INPUT_SHAPE), 'torch': torch.__version__}
    with tempfile.TemporaryDirectory(prefix='upstream_mixdehazenet_') as tmp:
        for key, repo, url in (('mixdehazenet_t', args.mixdehazenet_repo, 'AmeryXiong/MixDehazeNet'),
                               ('mixcldehazenet_t', args.mixcl_repo, 'DanielHo-BS/MixCLDehazeNet')):
            source, commit = read_upstream_file(repo)
            module = import_upstream(source, f'upstream_{key}', tmp)
            outputs[key] = run_upstream(module, image, text if key == 'mixcldehazenet_t' else None)
            provenance[key] = {'repo': f'https://github.com/{url}', 'commit': commit, 'file': UPSTREAM_FILE,
                               'sha256': hashlib.sha256(source.encode()).hexdigest(), 'builder': 'MixDehazeNet_t()'}
    buf = io.BytesIO()
    np.savez_compressed(buf, image=image.numpy(), text=text.numpy(),
                        **{k: v.numpy() for k, v in outputs.items()},
                        provenance=np.array(json.dumps(provenance, sort_keys=True)))
    sys.path.insert(0, ROOT)
    from mixcl_arch.utils.file_io import atomic_write_bytes
    atomic_write_bytes(buf.getvalue(), args.out)
    print(json.dumps({'out': args.out, 'bytes': os.path.getsize(args.out), **provenance}, indent=1))
    return 0


if __name__ == '__main__':
    sys.exit(main())
