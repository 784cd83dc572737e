"""End to end through the real entry points (subprocesses, cwd = a temp dir): train, validate, resume, test.

Also holds the tiny-data helpers the other pipeline tests import (``make_pair_dataset``, ``tiny_train_opt``...).
"""
import collections
import glob
import math
import os
import re
import subprocess
import sys

import cv2
import numpy as np
import pytest
import yaml

from mixcl_arch.utils.basicsr_fixes import find_latest_state, load_training_state, normalize_argv
from mixcl_arch.utils.checkpoint import load_checkpoint_file

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))
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


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """Train 40 iterations, then resume with --auto_resume to 60 (the same experiment)."""
    work = tmp_path_factory.mktemp('pipeline')
    hazy_psnr = make_pair_dataset(str(work / 'datasets' / 'tiny'))
    opt = tiny_train_opt(os.path.join('datasets', 'tiny'), name='tiny_e2e', total_iter=40, periods=60, save_freq=20,
                         val_freq=20, ema_decay=0.5)
    yml = write_yaml(opt, work / 'train_tiny.yml')
    first = run_entry(TRAIN, ['-opt', yml], cwd=str(work))
    state4 = load_training_state(str(work / 'experiments' / 'tiny_e2e' / 'training_states' / '40.state'))
    second = run_entry(TRAIN, ['-opt', yml, '--auto_resume', '--force_yml', 'train:total_iter=60'], cwd=str(work))
    return dict(work=work, first=first, second=second, state4=state4, hazy_psnr=hazy_psnr, yml=yml)


def test_training_writes_under_cwd_and_logs_validation_metrics(trained):
    work, log = trained['work'], trained['first']
    exp = work / 'experiments' / 'tiny_e2e'
    assert {'net_g_20.pth', 'net_g_40.pth', 'net_g_latest.pth'} <= set(os.listdir(exp / 'models'))
    assert not glob.glob(str(exp / 'models' / '.*.tmp'))  # atomic saves leave no temp files
    psnr, ssim, psnr8 = (validation_values(log, m) for m in ('psnr', 'ssim', 'psnr_uint8'))
    assert len(psnr) == 3 and len(ssim) == 3  # iters 20, 40 and the final validation
    assert all(math.isfinite(v) and 5 < v < 60 for v in psnr) and all(-1 <= v <= 1 for v in ssim)
    # 40 steps already dehaze the toy set: well above the hazy input's PSNR
    assert psnr[-1] > trained['hazy_psnr'] + 2, (psnr, trained['hazy_psnr'])
    assert abs(psnr[-1] - psnr8[-1]) < 0.5  # float vs uint8 protocol: close, not the same code path
    assert glob.glob(str(work / 'tb_logger' / 'tiny_e2e' / 'events.out.tfevents.*'))
    assert glob.glob(str(exp / 'visualization' / '000' / '000_40.png'))
    ckpt = load_checkpoint_file(str(exp / 'models' / 'net_g_40.pth'))
    assert set(ckpt) == {'params', 'params_ema'}
    assert not any(k.startswith('module.') for k in ckpt['params'])


def test_resume_continues_with_saved_optimizer_and_scheduler_state(trained):
    work, log = trained['work'], trained['second']
    assert 'Resuming training from epoch' in log and 'iter: 40.' in log
    state4 = trained['state4']
    # BasicSR steps the scheduler from iter 2 on, so last_epoch == iter - 1
    assert state4['iter'] == 40 and state4['schedulers'][0]['last_epoch'] == 39
    steps4 = {int(s['step']) for s in state4['optimizers'][0]['state'].values()}
    assert steps4 == {40}
    state8 = load_training_state(str(work / 'experiments' / 'tiny_e2e' / 'training_states' / '60.state'))
    # Adam's step counters and the scheduler went on from 40 (a fresh optimizer would be at step 20)
    assert {int(s['step']) for s in state8['optimizers'][0]['state'].values()} == {60}
    assert state8['schedulers'][0]['last_epoch'] == 59
    assert state8['schedulers'][0]['periods'] == state4['schedulers'][0]['periods']
    assert 'iter:      41,' in log and 'iter:       1,' not in log


def test_test_entry_point_with_and_without_gt(trained):
    work = trained['work']
    weights = str(work / 'experiments' / 'tiny_e2e' / 'models' / 'net_g_latest.pth')
    ds_root = os.path.join('datasets', 'tiny')
    single = dict(name='user_photos', type='SingleImageDataset', dataroot_lq=os.path.join(ds_root, 'test', 'hazy'),
                  io_backend=dict(type='disk'))
    opt = dict(name='tiny_test', model_type='MixCLDehazeModel', num_gpu='auto', manual_seed=0,
               datasets=dict(test_1=paired_dataset_opt(ds_root, 'test', 'tiny_paired', train=False), test_2=single),
               network_g=dict(TINY_NET),
               path=dict(pretrain_network_g=weights, param_key_g='params_ema', strict_load_g=True),
               val=dict(save_img=True, suffix=None, metrics=dict(psnr=dict(type='calculate_psnr_dehaze'),
                                                                 ssim=dict(type='calculate_ssim_dehaze'))))
    log = run_entry(TEST, ['-opt', write_yaml(opt, work / 'test_tiny.yml')], cwd=str(work))
    assert len(validation_values(log, 'psnr')) == 1  # only the paired set has GT
    assert 'no ground truth' in log
    vis = work / 'results' / 'tiny_test' / 'visualization'
    assert sorted(os.listdir(vis / 'user_photos')) == ['000_tiny_test.png', '001_tiny_test.png']
    assert len(os.listdir(vis / 'tiny_paired')) == 2


def test_normalize_argv_accepts_both_local_rank_spellings():
    argv = ['train.py', '-opt', 'x.yml', '--local-rank=1', '--local-rank', '2', '--local_rank=3']
    assert normalize_argv(argv) == ['train.py', '-opt', 'x.yml', '--local_rank=1', '--local_rank', '2',
                                    '--local_rank=3']


def test_training_state_with_counter_loads_safely_and_latest_is_found(tmp_path):
    from mixcl_arch.utils.checkpoint import atomic_torch_save
    state_dir = tmp_path / 'experiments' / 'x' / 'training_states'
    for it in (5, 40, 7):
        atomic_torch_save({'iter': it, 'schedulers': [{'milestones': collections.Counter([10, 20])}]},
                          state_dir / f'{it}.state')
    (state_dir / 'notes.txt').write_text('not a state')
    path = find_latest_state(str(tmp_path), 'x')
    assert path.endswith('40.state')
    state = load_training_state(path)
    assert state['iter'] == 40 and state['schedulers'][0]['milestones'] == collections.Counter([10, 20])
    assert find_latest_state(str(tmp_path), 'missing') is None
    with pytest.raises(FileNotFoundError, match='resume_state'):
        load_training_state(str(tmp_path / 'nope.state'))
