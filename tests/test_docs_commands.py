"""Every ```bash block of README.md and docs/*.md runs as written, or is skipped here with the reason.

Each block is named by its file and its first line. A block is either in :data:`RUN` (it needs no dataset, weights or
GPU: it runs on generated inputs, word for word, in a scratch folder that links ``scripts/``, ``options/`` and
``mixcl_arch/``) or in :data:`SKIP` with what it needs. A block in neither (a new or edited one) fails
:func:`test_every_bash_block_is_classified`, as does an entry whose block is gone.
"""
import csv
import glob
import os
import os.path as osp
import re
import subprocess
import sys

import cv2
import numpy as np
import pytest

from _train_helpers import ROOT

DOCS = ['README.md'] + sorted(osp.relpath(p, ROOT) for p in glob.glob(osp.join(ROOT, 'docs', '*.md')))


def bash_blocks():
    """{(doc, first line without its trailing comment): block text} of every ```bash block."""
    blocks = {}
    for doc in DOCS:
        with open(osp.join(ROOT, doc), encoding='utf-8') as f:
            text = f.read()
        for m in re.finditer(r'^```bash\n(.*?)^```', text, re.S | re.M):
            key = (doc, re.sub(r'\s+#.*$', '', m.group(1).splitlines()[0]).strip())
            assert key not in blocks, f'two bash blocks of {doc} start with {key[1]!r}: make the first lines differ'
            blocks[key] = m.group(1)
    return blocks


# ----------------------------------------------------------------------------------------------------- skipped
DATASET = 'needs a real dataset (RESIDE-6K / ITS / OTS / SOTS / Haze4K / NH-HAZE / CIFAR) under datasets/'
WEIGHTS = 'needs trained or official network weights'
CLIP = 'needs CLIP weights (none ship offline)'
GPU = 'needs CUDA GPUs'
NODES = 'needs several machines / a Slurm cluster (tests/test_multinode.py runs the torchrun form on localhost)'
INSTALL = 'installs packages (network); scripts/install.sh and CI run it'
TRAINS = 'trains for minutes'

SKIP = {
    ('README.md', 'bash scripts/demo.sh'):
        TRAINS + ' (300 iterations); tests/test_demo.py runs it shortened (DEMO_ITERS)',
    ('README.md', 'pip install torch torchvision'): INSTALL,
    ('README.md', 'python -m basicsr.train -opt options/train/train_MixCLDehazeNet_T_demo.yml'):
        'needs the demo data (scripts/demo.sh) and a BasicSR checkout; tests/test_basicsr_hook.py runs each form',
    ('README.md', 'python -m mixcl_arch.dehaze -i my_photos/ -o dehazed/ --weights net_g.pth \\'): WEIGHTS,
    ('README.md', 'python scripts/extract_clip_features.py -opt options/train/train_MixCLDehazeNet_S_RESIDE6K.yml'):
        DATASET + '; ' + CLIP,
    ('README.md', 'python mixcl_arch/train.py -opt options/train/train_MixCLDehazeNet_S_RESIDE6K.yml'): DATASET,
    ('README.md', 'python mixcl_arch/test.py -opt options/test/test_MixCLDehazeNet_S_RESIDE6K.yml'): DATASET + '; '
        + WEIGHTS,
    ('README.md', 'python scripts/benchmark_quality.py --data demo_output/data/test --out bench \\'): WEIGHTS
        + ' (AOD-Net trained on the demo data, docs/baselines.md)',
    ('docs/baselines.md',
     'python scripts/benchmark_quality.py --data demo_output/data/test --out demo_output/bench \\'): WEIGHTS,
    ('docs/baselines.md', 'python scripts/benchmark_quality.py --data data/test --out bench --threads 1 --figure 3 \\'):
        WEIGHTS,
    ('docs/baselines.md', 'python ../mixcl_arch/train.py -opt ../options/train/train_AODNet_demo.yml \\'): TRAINS
        + ' (three nets, then a benchmark of them)',
    ('docs/clip.md', '# one model, ImageFolder layout DATA/<class>/<images>; prints the JSON summary'): DATASET
        + '; ' + CLIP,
    ('docs/clip.md', 'python scripts/extract_clip_features.py -opt options/train/train_MixCLDehazeNet_S_RESIDE6K.yml'):
        DATASET + '; ' + CLIP,
    ('docs/cliphaze.md', '# CLIP route: density maps and the CLIP image embedding'): DATASET + '; ' + CLIP,
    ('docs/cliphaze.md', 'python -m mixcl_arch.dehaze -i photos/ -o dehazed/ --weights net_g.pth --opt '
                         'options/test/test_CLIPHazeNet_S_NHHAZE.yml'): WEIGHTS + '; ' + CLIP
        + ' (tests/test_cliphaze_pipeline.py runs these forms on a tiny CLIPHazeNet and CLIP)',
    ('docs/cliphaze.md', 'W=experiments/CLIPHazeNet_S_NHHAZE_B16G1_15k/models/net_g_latest.pth'): DATASET + '; '
        + WEIGHTS,
    ('docs/cliphaze.md', '# equal wall-clock comparison on the demo data, from the folder that holds data/'): TRAINS
        + ' (4 nets, about 17 minutes on one CPU thread)',
    ('docs/datasets.md',
     'python scripts/make_haze_pairs.py --index-existing datasets/RESIDE-6K/train --domain outdoor'): DATASET,
    ('docs/datasets.md', 'mkdir -p datasets/RESIDE-IN/train datasets/RESIDE-IN/test datasets/RESIDE-OUT/train '
                         'datasets/RESIDE-OUT/test'): DATASET + ' (downloads/)',
    ('docs/datasets.md', 'mkdir -p datasets/Haze4K/train datasets/Haze4K/test'): DATASET + ' (downloads/)',
    ('docs/datasets.md', '# NH-HAZE (the same for Dense-Haze, O-HAZE, I-HAZE with their names and split)'): DATASET
        + ' (downloads/)',
    ('docs/datasets.md', 'python scripts/extract_clip_features.py -opt options/train/<your option file>.yml'): DATASET
        + '; ' + CLIP + ' (a placeholder file name)',
    ('docs/datasets.md', 'python scripts/create_lmdb.py --root datasets/RESIDE-6K'): DATASET,
    ('docs/dehazenet.md', 'python scripts/make_demo_data.py --out demo_output/data'): TRAINS
        + ' (DehazeNet 1000 iterations) and needs AOD-Net weights',
    ('docs/dehazenet.md', 'python mixcl_arch/train.py -opt options/train/train_DehazeNet_RESIDE6K.yml'): DATASET,
    ('docs/dehazenet.md',
     'python ../scripts/benchmark_quality.py --data data/test --out bench --threads 1 \\'): WEIGHTS,
    ('docs/export.md', "pip install -e '.[onnx]'"): INSTALL + '; ' + WEIGHTS,
    ('docs/inference.md', '# a folder, weights from training (BasicSR format) or from the original repository '
                          '(state_dict, module. prefix)'): WEIGHTS,
    ('docs/model_zoo.md', 'python scripts/convert_official_checkpoint.py -i indoor/MixDehazeNet-s.pth -o '
                          'experiments/pretrained_models/MixDehazeNet_S_ITS.safetensors'): WEIGHTS
        + ' (the official files)',
    ('docs/speed.md', 'python scripts/benchmark_speed.py --device cuda --profile 15'): GPU,
    ('docs/training.md', '# train (single process, GPU if available else CPU)'): DATASET,
    ('docs/training.md', "# torchrun on every node; HEAD: a host name all nodes reach (node 0's), where the c10d "
                         'rendezvous store runs'): NODES + '; ' + DATASET,
    ('docs/training.md', '#!/bin/bash'): NODES + '; ' + DATASET,
    ('docs/training.md', 'srun --nodes 2 --ntasks-per-node 4 --gres gpu:4 \\'): NODES + '; ' + GPU,
    ('docs/training.md', 'python -m basicsr.train -opt options/train/train_MixCLDehazeNet_T_demo.yml'): TRAINS
        + '; tests/test_basicsr_hook.py runs these in fresh venvs (editable and wheel installs)',
}


# ----------------------------------------------------------------------------------------------------- run
def _photos(folder, n, size=(48, 64)):
    os.makedirs(folder, exist_ok=True)
    for i in range(n):
        img = np.random.default_rng(i).integers(0, 256, (*size, 3), dtype=np.uint8)
        cv2.imwrite(osp.join(folder, f'photo{i}.png'), cv2.GaussianBlur(img, (5, 5), 0))


def _shared_photos(work):
    _photos(work / 'home' / 'photos', 10)
    _photos(work.parent / 'shared' / 'photos', 4)
    with open(work.parent / 'shared' / 'photos' / 'MANIFEST.csv', 'w') as f:
        f.write('file,domain\n' + ''.join(f'photo{i}.png,{("indoor", "outdoor")[i % 2]}\n' for i in range(4)))


def _demo_data(work):
    subprocess.run([sys.executable, 'scripts/make_demo_data.py', '--out', 'demo_output/data'], cwd=work, check=True,
                   capture_output=True, timeout=300)


def _meta(path):
    with open(path) as f:
        return list(csv.DictReader(f))


# (doc, first line) -> (prepare the scratch folder, check what the block wrote)
RUN = {
    ('README.md', 'python scripts/make_haze_pairs.py --input PHOTOS --output datasets/my_haze --domain outdoor '
                  '--versions 4 --test-frac 0.1'): (
        lambda work: _photos(work / 'PHOTOS', 10),
        lambda work: (len(_meta(work / 'datasets/my_haze/train/meta.csv')) == 36
                      and all(osp.isfile(work / 'datasets/my_haze' / s / f'{sub}.lmdb' / 'data.mdb')
                              for s in ('train', 'test') for sub in ('hazy', 'GT')))),
    ('docs/datasets.md', 'python scripts/make_haze_pairs.py --input ~/photos --output datasets/my_haze \\'): (
        _shared_photos,
        lambda work: (len(_meta(work / 'datasets/my_haze/test/meta.csv')) == 4
                      and {r['domain'] for r in _meta(work / 'datasets/photos_haze/train/meta.csv')}
                      == {'indoor', 'outdoor'})),
    ('docs/baselines.md', 'python -m mixcl_arch.dehaze -i photos/ -o out/ --method dcp --param preset=lab_report '
                          '--save-maps'): (
        lambda work: _photos(work / 'photos', 2),
        lambda work: all(osp.isfile(work / 'out' / 'maps' / f'photo{i}_{m}.png')
                         for i in range(2) for m in ('dark', 'transmission', 'depth'))),
    ('docs/baselines.md', 'python scripts/benchmark_quality.py --data demo_output/data/test --out bench_dcp '
                          '--threads 1 --figure 3 --figure-maps \\'): (
        _demo_data,
        lambda work: (osp.isfile(work / 'bench_dcp' / 'figure.png')
                      and len(_meta(work / 'compare' / 'dcp_lab_vs_paper.csv')) == 3)),
}


def test_every_bash_block_is_classified():
    blocks = set(bash_blocks())
    assert not set(SKIP) & set(RUN)
    unclassified = sorted(blocks - set(SKIP) - set(RUN))
    assert not unclassified, 'classify these bash blocks in tests/test_docs_commands.py (RUN or SKIP with the ' \
        f'reason): {unclassified}'
    gone = sorted((set(SKIP) | set(RUN)) - blocks)
    assert not gone, f'these classified blocks are no longer in the docs: {gone}'


@pytest.mark.parametrize('key', sorted(RUN), ids=lambda key: f'{key[0]}:{key[1][:40]}')
def test_bash_block_runs_as_written(key, tmp_path):
    block = bash_blocks().get(key)
    assert block is not None, f'{key} is gone from the docs'
    work = tmp_path / 'work'
    work.mkdir()
    for name in ('scripts', 'options', 'mixcl_arch'):
        os.symlink(osp.join(ROOT, name), work / name)
    prepare, check = RUN[key]
    prepare(work)
    env = dict(os.environ, HOME=str(work / 'home'), OMP_NUM_THREADS='1', MKL_NUM_THREADS='1',
               PATH=os.pathsep.join([osp.dirname(sys.executable), os.environ.get('PATH', '')]))
    proc = subprocess.run(['bash', '-e', '-o', 'pipefail', '-c', block], cwd=work, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, f'{key[0]}: block failed ({proc.returncode}):\n{block}\n{proc.stderr[-4000:]}'
    assert check(work), f'{key[0]}: block ran but did not write what it says:\n{block}'
