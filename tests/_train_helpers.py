"""Shared helpers of the pipeline tests: tiny paired data, complete training YAMLs, running the entry points.

Kept out of the test modules so that each test module is imported once, by pytest only.
"""
import math
import os
import re
import subprocess
import sys

import cv2
import numpy as np
import yaml

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))


def load_script(name):
    """Import ``scripts/<name>.py`` as a fresh module (the scripts are not a package)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, 'scripts', f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
TRAIN = os.path.join(ROOT, 'mixcl_arch', 'train.py')
TEST = os.path.join(ROOT, 'mixcl_arch', 'test.py')
TINY_NET = dict(type='MixDehazeNet', embed_dims=[8, 16, 16, 16, 8], depths=[1, 1, 1, 1, 1], data_range='unit')


def make_pair_dataset(root, n_train=6, n_test=2, size=40, seed=0):
    """ROOT/{train,test}/{hazy,GT}/NNN.png: skimage crops and a synthetic vertical-gradient haze.

    Returns:
        float: Mean PSNR (dB, float protocol) of the hazy test images against their GT.
    """
    from skimage import data
    rng = np.random.default_rng(seed)
    sources = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    psnrs = []
    for split, n in (('train', n_train), ('test', n_test)):
        for sub in ('hazy', 'GT'):
            os.makedirs(os.path.join(root, split, sub), exist_ok=True)
        for i in range(n):
            src = sources[i % len(sources)]
            y, x = rng.integers(0, src.shape[0] - 2 * size), rng.integers(0, src.shape[1] - 2 * size)
            gt = cv2.resize(src[y:y + 2 * size, x:x + 2 * size], (size, size), interpolation=cv2.INTER_AREA)
            gt = np.round(gt).astype(np.float32) / 255
            t = np.linspace(0.35, 0.8, size, dtype=np.float32)[:, None, None]
            hazy = np.round((gt * t + 0.85 * (1 - t)) * 255) / 255
            cv2.imwrite(os.path.join(root, split, 'GT', f'{i:03d}.png'), (gt[..., ::-1] * 255).round().astype(np.uint8))
            cv2.imwrite(os.path.join(root, split, 'hazy', f'{i:03d}.png'),
                        (hazy[..., ::-1] * 255).round().astype(np.uint8))
            if split == 'test':
                psnrs.append(10 * math.log10(1 / float(((hazy - gt)**2).mean())))
    return float(np.mean(psnrs))


def paired_dataset_opt(root, split, name, train=True, gt_size=32, batch=2):
    """BasicSR PairedImageDataset options over :func:`make_pair_dataset`'s layout."""
    opt = dict(name=name, type='PairedImageDataset', dataroot_gt=os.path.join(root, split, 'GT'),
               dataroot_lq=os.path.join(root, split, 'hazy'), filename_tmpl='{}', io_backend=dict(type='disk'), scale=1)
    if train:
        opt.update(gt_size=gt_size, use_hflip=True, use_rot=False, num_worker_per_gpu=0, batch_size_per_gpu=batch,
                   dataset_enlarge_ratio=1)
    return opt


def tiny_train_opt(data_root, name='tiny', total_iter=4, periods=8, save_freq=2, val_freq=2, net=None, **train_extra):
    """A complete training YAML dict: tiny MixDehazeNet, AdamW + cosine, L1, dehazing metrics, TensorBoard."""
    train = dict(optim_g=dict(type='AdamW', lr=1e-3, weight_decay=0.), total_iter=total_iter, warmup_iter=-1,
                 scheduler=dict(type='CosineAnnealingRestartLR', periods=[periods], restart_weights=[1], eta_min=1e-5),
                 pixel_opt=dict(type='L1Loss', loss_weight=1., reduction='mean'))
    train.update(train_extra)
    return dict(
        name=name, model_type='MixCLDehazeModel', num_gpu='auto', manual_seed=0,
        datasets=dict(train=paired_dataset_opt(data_root, 'train', 'tiny_train'),
                      val=paired_dataset_opt(data_root, 'test', 'tiny_val', train=False)),
        network_g=dict(net or TINY_NET), path=dict(pretrain_network_g=None, strict_load_g=True, resume_state=None),
        train=train,
        val=dict(val_freq=val_freq, save_img=True, metrics=dict(
            psnr=dict(type='calculate_psnr_dehaze'), ssim=dict(type='calculate_ssim_dehaze'),
            psnr_uint8=dict(type='calculate_psnr', crop_border=0, test_y_channel=False))),
        logger=dict(print_freq=1, save_checkpoint_freq=save_freq, use_tb_logger=True),
        dist_params=dict(backend='nccl', port=29500))


def write_yaml(opt, path):
    with open(path, 'w') as f:
        yaml.safe_dump(opt, f, sort_keys=False)
    return str(path)


def run_entry(script, args, cwd, timeout=240, launcher=None):
    """Run an entry point in ``cwd`` with 1 thread per process; fail with its output on error."""
    env = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', PYTHONWARNINGS='ignore')
    cmd = (launcher or [sys.executable]) + [script] + list(args)
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f'{cmd} failed ({proc.returncode}):\n{out[-6000:]}'
    return out


def validation_values(log_text, metric):
    """All logged validation values of ``metric`` (BasicSR's "# name: value" lines), in order."""
    return [float(v) for v in re.findall(rf'# {metric}: ([-\d.inf]+)', log_text)]


# The real training entry point with a model subclass that dumps what the test cannot see from outside: the state
# right after resuming (``resumed.pth``) and, under DDP, every rank's final weights (``rank<r>.pth``; only rank 0
# saves checkpoints in BasicSR).
DUMP_ENTRY = '''
import sys
sys.path.insert(0, {root!r})
import torch
import mixcl_arch
from basicsr.utils.registry import MODEL_REGISTRY
from mixcl_arch.models.mixcl_dehaze_model import MixCLDehazeModel


def _cpu(state):
    return {{k: v.detach().cpu() for k, v in state.items()}}


@MODEL_REGISTRY.register()
class StateDumpDehazeModel(MixCLDehazeModel):
    def resume_training(self, resume_state):
        super().resume_training(resume_state)
        torch.save(dict(net_g=_cpu(self.get_bare_model(self.net_g).state_dict()),
                        net_g_ema=_cpu(self.net_g_ema.state_dict()) if hasattr(self, 'net_g_ema') else None,
                        optimizer=self.optimizer_g.state_dict(), scheduler=self.schedulers[0].state_dict(),
                        scaler=self.scaler.state_dict() if self.scaler is not None else None), 'resumed.pth')

    def save(self, epoch, current_iter):
        super().save(epoch, current_iter)
        if current_iter == -1 and torch.distributed.is_initialized():
            rank = torch.distributed.get_rank()
            torch.save(dict(state=_cpu(self.get_bare_model(self.net_g).state_dict()),
                            world=torch.distributed.get_world_size(), backend=torch.distributed.get_backend()),
                       f'rank{{rank}}.pth')


from mixcl_arch.train import main
main()
'''


def write_dump_entry(folder):
    """Write the :data:`DUMP_ENTRY` script into ``folder``; train with ``model_type: StateDumpDehazeModel``.

    Returns:
        str: The script path.
    """
    path = os.path.join(str(folder), 'dump_train.py')
    with open(path, 'w') as f:
        f.write(DUMP_ENTRY.format(root=ROOT))
    return path
