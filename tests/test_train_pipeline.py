"""End to end through the real entry points (subprocesses, cwd = a temp dir): train, validate, resume, test,
LMDB-backed training, and what the training DataLoader's workers produce. Helpers: ``tests/_train_helpers.py``."""
import collections
import glob
import math
import os
import shutil
import subprocess
import sys

import pytest
import torch

from _train_helpers import (ROOT, TEST, TINY_NET, TRAIN, make_pair_dataset, paired_dataset_opt, run_entry,
                            tiny_train_opt, validation_values, write_yaml)
from basicsr.data import build_dataloader, build_dataset
from mixcl_arch.utils.basicsr_fixes import find_latest_state, load_training_state, normalize_argv
from mixcl_arch.utils.checkpoint import load_checkpoint_file


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """Train 40 iterations (resume: tests/test_resume.py)."""
    work = tmp_path_factory.mktemp('pipeline')
    hazy_psnr = make_pair_dataset(str(work / 'datasets' / 'tiny'))
    opt = tiny_train_opt(os.path.join('datasets', 'tiny'), name='tiny_e2e', total_iter=40, periods=60, save_freq=20,
                         val_freq=20, ema_decay=0.5)
    log = run_entry(TRAIN, ['-opt', write_yaml(opt, work / 'train_tiny.yml')], cwd=str(work))
    return dict(work=work, log=log, hazy_psnr=hazy_psnr)


def test_training_writes_under_cwd_and_logs_validation_metrics(trained):
    work, log = trained['work'], trained['log']
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
    assert set(ckpt) == {'params', 'params_ema', 'meta'}  # meta: arch, data_range, network_g
    assert not any(k.startswith('module.') for k in ckpt['params'])


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
    from mixcl_arch.utils.file_io import atomic_torch_save
    state_dir = tmp_path / 'experiments' / 'x' / 'training_states'
    for it in (5, 40, 7):
        state = {'iter': it, 'optimizers': [], 'schedulers': [{'milestones': collections.Counter([10, 20])}]}
        atomic_torch_save(state, state_dir / f'{it}.state')
    (state_dir / 'notes.txt').write_text('not a state')
    path = find_latest_state(str(tmp_path), 'x')
    assert path.endswith('40.state')
    state = load_training_state(path)
    assert state['iter'] == 40 and state['schedulers'][0]['milestones'] == collections.Counter([10, 20])
    assert find_latest_state(str(tmp_path), 'missing') is None
    with pytest.raises(FileNotFoundError, match='resume_state'):
        load_training_state(str(tmp_path / 'nope.state'))


def clip_pair_opt(lq, gt, name, train=True, **extra):
    """The project's CLIPPairedImageDataset (what the demo and RESIDE options train on; it serves data only)."""
    opt = dict(name=name, type='CLIPPairedImageDataset', dataroot_lq=lq, dataroot_gt=gt, io_backend=dict(type='disk'))
    if train:
        opt.update(gt_size=16, use_hflip=True, num_worker_per_gpu=0, batch_size_per_gpu=2, dataset_enlarge_ratio=1)
    opt.update(extra)
    return opt


def test_lmdb_backed_training_run(tmp_path):
    """scripts/create_lmdb.py packs the tiny set; training then reads only the databases (the PNG folders are gone)."""
    root = os.path.join('datasets', 'tiny')
    make_pair_dataset(str(tmp_path / root), n_train=4, n_test=1)
    subprocess.run([sys.executable, os.path.join(ROOT, 'scripts', 'create_lmdb.py'), '--root', str(tmp_path / root)],
                   check=True, capture_output=True, timeout=120)
    for split in ('train', 'test'):
        for sub in ('hazy', 'GT'):
            shutil.rmtree(tmp_path / root / split / sub)
    opt = tiny_train_opt(root, name='tiny_lmdb', total_iter=2, periods=2, save_freq=2, val_freq=2)
    for key, split in (('train', 'train'), ('val', 'test')):
        opt['datasets'][key] = clip_pair_opt(os.path.join(root, split, 'hazy.lmdb'),
                                             os.path.join(root, split, 'GT.lmdb'), f'lmdb_{split}',
                                             train=key == 'train', io_backend=dict(type='lmdb'))
    log = run_entry(TRAIN, ['-opt', write_yaml(opt, tmp_path / 'lmdb.yml')], cwd=str(tmp_path))
    psnr = validation_values(log, 'psnr')
    assert psnr and all(math.isfinite(v) for v in psnr)
    assert (tmp_path / 'experiments' / 'tiny_lmdb' / 'models' / 'net_g_2.pth').is_file()


def test_dataloader_workers_draw_different_random_crops(tmp_path):
    """The training DataLoader (BasicSR's build_dataloader and worker seeding, the project's dataset) with 2 workers
    over four copies of one pair: batch 0 comes from worker 0 and batch 1 from worker 1, so equal crops would mean
    the workers share one random state."""
    root = tmp_path / 'tiny'
    make_pair_dataset(str(root), n_train=1, n_test=1)
    for sub in ('hazy', 'GT'):
        for i in range(1, 4):
            shutil.copy(root / 'train' / sub / '000.png', root / 'train' / sub / f'{i:03d}.png')
    opt = clip_pair_opt(str(root / 'train' / 'hazy'), str(root / 'train' / 'GT'), 'crops', phase='train',
                        num_worker_per_gpu=2, batch_size_per_gpu=1)
    loader = build_dataloader(build_dataset(opt), opt, num_gpu=0, dist=False, sampler=None, seed=0)
    assert loader.num_workers == 2
    crops = [batch['gt'][0] for batch in loader]
    assert len(crops) == 4 and all(c.shape == (3, 16, 16) for c in crops)
    assert not torch.equal(crops[0], crops[1]), 'workers 0 and 1 produced the same random crop'
    assert len({c.numpy().tobytes() for c in crops}) == 4
