"""The reference-recipe option files (``*_ref.yml``) against the reference's own configs, the best checkpoint they
save and test, and no-reference evaluation (NIQE) of a folder without ground truth.

The table below is transcribed by hand from the reference repositories, so a YAML is checked against the
reference, not against the script that wrote it:

* github DanielHo-BS/MixCLDehazeNet ``configs/<dir>/MixDehazeNet-<t|s|b|l>.json`` (the source named per row; the same
  values as github AmeryXiong/MixDehazeNet except where ``amery`` notes a difference);
* their ``train.py``: ``L1 + 0.1 * ContrastLoss_res`` under ``autocast`` + ``GradScaler``, ``AdamW(lr)``,
  ``CosineAnnealingLR(T_max=epochs, eta_min=lr * 1e-2)`` (no warm-up: ``utils/scheduler.py`` is never used),
  ``DataLoader(..., drop_last=True)``, validation every ``eval_freq`` epochs on ``PairLoader(test, valid_mode,
  patch_size)`` (``valid``: centre crop of ``patch_size``; ``test``: full images), ``best.pth`` at each new best
  validation PSNR; ``test.py`` evaluates ``best.pth`` on full images.
"""
import collections
import csv
import json
import os
import re

import cv2
import numpy as np
import pytest
import torch
from basicsr.data import build_dataloader, build_dataset
from basicsr.metrics import calculate_niqe
from basicsr.models import build_model

from _train_helpers import ROOT, TINY_NET, make_pair_dataset, tiny_train_opt
from mixcl_arch.utils.options import load_yaml_file

Ref = collections.namedtuple('Ref', 'source batch patch valid_mode edge_decay only_h_flip lr epochs eval_freq amery',
                             defaults=(None, ))
REFERENCE = {
    ('RESIDE6K', 'S'): Ref('configs/reside6k/MixDehazeNet-s.json', 16, 256, 'valid', 0, True, 1e-4, 1000, 1,
                           amery='eval_freq 10'),
    ('Haze4K', 'T'): Ref('configs/haze4k/MixDehazeNet-t.json', 30, 400, 'valid', 0, True, 2e-4, 1000, 10),
    ('Haze4K', 'S'): Ref('configs/haze4k/MixDehazeNet-s.json', 22, 256, 'valid', 0, True, 1e-4, 1000, 10),
    ('Haze4K', 'B'): Ref('configs/haze4k/MixDehazeNet-b.json', 16, 256, 'valid', 0, True, 1e-4, 1000, 10),
    ('Haze4K', 'L'): Ref('configs/haze4k/MixDehazeNet-l.json', 8, 256, 'valid', 0, True, 1e-4, 1500, 10),
    ('NHHAZE', 'S'): Ref('configs/nhhaze/MixDehazeNet-s.json', 14, 350, 'valid', 0, True, 1e-4, 5000, 10),
    ('DenseHaze', 'S'): Ref('configs/densehaze/MixDehazeNet-s.json', 14, 350, 'valid', 0, True, 1e-4, 5000, 10),
    ('DenseHaze', 'L'): Ref('configs/densehaze/MixDehazeNet-l.json', 2, 500, 'valid', 0, True, 1e-4, 5000, 10),
    # the -t json also holds warmup_epochs 15 / const_epochs 0 / frozen_epochs 50, which train.py never reads
    ('ITS', 'T'): Ref('configs/indoor/MixDehazeNet-t.json', 32, 256, 'test', 0, False, 4e-4, 400, 1),
    ('ITS', 'S'): Ref('configs/indoor/MixDehazeNet-s.json', 36, 256, 'test', 0, False, 2e-4, 500, 1),
    ('ITS', 'B'): Ref('configs/indoor/MixDehazeNet-b.json', 16, 256, 'test', 0, False, 2e-4, 500, 1,
                      amery='batch 32'),
    ('ITS', 'L'): Ref('configs/indoor/MixDehazeNet-l.json', 16, 256, 'test', 0.1, False, 2e-4, 480, 1),
    ('OTS', 'T'): Ref('configs/outdoor/MixDehazeNet-t.json', 32, 256, 'valid', 0, True, 4e-4, 30, 1),
    ('OTS', 'S'): Ref('configs/outdoor/MixDehazeNet-s.json', 49, 256, 'valid', 0, True, 2e-4, 50, 1),
    ('OTS', 'B'): Ref('configs/outdoor/MixDehazeNet-b.json', 16, 256, 'valid', 0, True, 2e-4, 40, 1,
                      amery='batch 32'),
    ('OTS', 'L'): Ref('configs/outdoor/MixDehazeNet-l.json', 16, 256, 'valid', 0, True, 2e-4, 40, 1),
}
EMPTY = {('NHHAZE', 'L'): 'configs/nhhaze/MixDehazeNet-l.json'}  # an empty file in both reference repositories
# training images per dataset (the iteration counts follow from them) and where the number comes from
TRAIN_IMAGES = {
    'RESIDE6K': (6000, 'DehazeFormer RESIDE-6K: 3000 ITS + 3000 OTS'),
    'Haze4K': (3000, 'Haze4K, Liu et al. ACM MM 2021: 3000 train / 1000 test'),
    'NHHAZE': (50, 'NH-HAZE, 55 pairs: 01-50 train (NTIRE 2020 train + validation), 51-55 test'),
    'DenseHaze': (50, 'Dense-Haze, 55 pairs: 01-50 train (NTIRE 2019 train + validation), 51-55 test'),
    'ITS': (13990, 'RESIDE ITS: 1399 clear x 10 hazy'),
    'OTS': (313950, 'RESIDE-beta OTS as used by DehazeFormer'),
}
OPTIONS = os.path.join(ROOT, 'options')


def ref_train_file(dataset, variant):
    return os.path.join(OPTIONS, 'train', f'train_MixCLDehazeNet_{variant}_{dataset}_ref.yml')


def ref_test_file(dataset, variant):
    return os.path.join(OPTIONS, 'test', f'test_MixCLDehazeNet_{variant}_{dataset}_ref.yml')


def test_every_reference_config_has_ref_files_and_nothing_else():
    shipped = {os.path.basename(f) for f in os.listdir(os.path.join(OPTIONS, 'train')) if f.endswith('_ref.yml')}
    assert shipped == {os.path.basename(ref_train_file(*key)) for key in REFERENCE}
    for dataset, variant in REFERENCE:
        assert os.path.isfile(ref_test_file(dataset, variant))
    for key, source in EMPTY.items():  # nothing to transcribe: no recipe is made up
        assert not os.path.exists(ref_train_file(*key)), source


@pytest.mark.parametrize('key', sorted(REFERENCE), ids=[f'{d}-{v}' for d, v in sorted(REFERENCE)])
def test_ref_training_yaml_matches_the_reference_config(key):
    dataset, variant = key
    ref = REFERENCE[key]
    path = ref_train_file(dataset, variant)
    text = open(path).read()
    opt = load_yaml_file(path)
    assert text.startswith('# REFERENCE RECIPE (_ref)') and ref.source in text
    assert opt['network_g']['type'] == 'MixCLDehazeNet' and opt['network_g']['variant'] == variant
    tr, val, train = opt['datasets']['train'], opt['datasets']['val'], opt['train']
    # data: crop, batch, flips / rotations, edge decay
    assert (tr['gt_size'], tr['batch_size_per_gpu']) == (ref.patch, ref.batch)
    assert tr['use_hflip'] is True and tr.get('use_vflip', False) is False and tr['use_rot'] is (not ref.only_h_flip)
    assert tr['edge_decay'] == ref.edge_decay
    # schedule: epochs -> iterations with drop_last, cosine to lr * 1e-2, no warm-up, validation every eval_freq
    per_epoch = TRAIN_IMAGES[dataset][0] // ref.batch
    assert train['total_iter'] == ref.epochs * per_epoch and train['scheduler']['periods'] == [train['total_iter']]
    assert train['optim_g']['type'] == 'AdamW' and train['optim_g']['lr'] == pytest.approx(ref.lr)
    assert train['scheduler']['type'] == 'CosineAnnealingRestartLR'
    assert train['scheduler']['eta_min'] == pytest.approx(ref.lr * 1e-2) and train['warmup_iter'] == -1
    assert opt['val']['val_freq'] == ref.eval_freq * per_epoch
    # loss and precision: L1 + 0.1 * CR with the ImageNet ResNet-152 as the reference, fp16 + GradScaler, no EMA
    assert train['pixel_opt'] == {'type': 'L1Loss', 'loss_weight': 1.0, 'reduction': 'mean'}
    cr = train['cr_opt']
    assert (cr['type'], cr['loss_weight'], cr['depth'], cr['input_range'], cr['batchnorm']) == (
        'ContrastLossRes', 0.1, 152, 'signed', 'batch')
    assert train['amp'] == 'fp16' and train['ema_decay'] == 0
    # validation: centre crops of patch_size for valid_mode 'valid', full images for 'test'; best PSNR kept
    assert val.get('center_crop') == (ref.patch if ref.valid_mode == 'valid' else None)
    assert opt['val']['save_best'] == 'psnr' and opt['val']['metrics']['psnr']['type'] == 'calculate_psnr_dehaze'
    assert tr['dataroot_lq'].endswith('/train/hazy') and val['dataroot_lq'].endswith('/test/hazy')


@pytest.mark.parametrize('key', sorted(REFERENCE), ids=[f'{d}-{v}' for d, v in sorted(REFERENCE)])
def test_ref_test_yaml_evaluates_the_best_checkpoint_on_full_images(key):
    train_opt = load_yaml_file(ref_train_file(*key))
    opt = load_yaml_file(ref_test_file(*key))
    assert opt['path']['pretrain_network_g'] == f"experiments/{train_opt['name']}/models/net_g_best.pth"
    assert opt['network_g'] == train_opt['network_g'] and opt['clip'] == train_opt['clip']
    assert opt['conditioning'] == train_opt['conditioning']  # the conditioning the net was trained with
    (test_ds, ) = opt['datasets'].values()
    val_ds = dict(train_opt['datasets']['val'])
    val_ds.pop('center_crop', None)  # the reference test.py reads full images
    assert test_ds == val_ds
    assert set(opt['val']['metrics']) == {'psnr', 'ssim'}


# ------------------------------------------------------------------------------------------- best checkpoint
def _val_loader(root):
    opt = dict(name='tiny_val', type='CLIPPairedImageDataset', phase='val', dataroot_gt=str(root / 'test' / 'GT'),
               dataroot_lq=str(root / 'test' / 'hazy'), io_backend=dict(type='disk'))
    return build_dataloader(build_dataset(opt), opt, num_gpu=0, dist=False)


def _train_model(root, tmp_path, **val_extra):
    opt = tiny_train_opt(str(root), net=dict(TINY_NET))
    opt['val'].update(save_img=False, **val_extra)
    opt.update(is_train=True, dist=False, rank=0, world_size=1, num_gpu=0, auto_resume=False, root_path=str(tmp_path))
    opt['path'].update(models=str(tmp_path / 'models'), training_states=str(tmp_path / 'states'), log=str(tmp_path),
                       visualization=str(tmp_path / 'vis'))
    os.makedirs(opt['path']['models'], exist_ok=True)
    return build_model(opt)


def _states(model):
    """Two weight sets of the tiny net, (better, worse) by validation PSNR."""
    torch.manual_seed(1)
    other = {k: v + 0.05 * torch.randn_like(v) if v.is_floating_point() else v
             for k, v in model.net_g.state_dict().items()}
    return model.net_g.state_dict(), other


def test_best_checkpoint_follows_validation_psnr_across_a_resume(tmp_path):
    root = tmp_path / 'data'
    make_pair_dataset(str(root), n_train=2, n_test=2, size=32)
    loader = _val_loader(root)
    model = _train_model(root, tmp_path, save_best='psnr')
    states = [{k: v.clone() for k, v in s.items()} for s in _states(model)]
    psnr = []
    for state in states:
        model.net_g.load_state_dict(state)
        model.validation(loader, 1, None)
        psnr.append(model.metric_results['psnr'])
    better, worse = (states[0], states[1]) if psnr[0] > psnr[1] else (states[1], states[0])
    assert max(psnr) > min(psnr)
    best_file, record_file = tmp_path / 'models' / 'net_g_best.pth', tmp_path / 'models' / 'net_g_best.json'

    def saved():
        return torch.load(best_file, weights_only=True)['params'], json.loads(record_file.read_text())

    model.net_g.load_state_dict(better)
    model.validation(loader, 10, None)
    params, record = saved()
    assert record == {'metric': 'psnr', 'value': pytest.approx(max(psnr)), 'iter': 10}
    assert all(torch.equal(params[k], better[k]) for k in better)
    model.net_g.load_state_dict(worse)
    model.validation(loader, 20, None)
    assert saved()[1]['iter'] == 10  # a worse validation keeps the best checkpoint
    # a resumed run (new model, fresh BasicSR best_metric_results) compares with the record, not from scratch
    resumed = _train_model(root, tmp_path, save_best='psnr')
    resumed.net_g.load_state_dict(worse)
    resumed.validation(loader, 30, None)
    params, record = saved()
    assert record['iter'] == 10 and all(torch.equal(params[k], better[k]) for k in better)
    resumed.net_g.load_state_dict(better)
    resumed.validation(loader, 40, None)
    assert saved()[1]['iter'] == 40  # ties count as a new best, as in BasicSR


def test_save_best_needs_a_computed_metric(tmp_path):
    root = tmp_path / 'data'
    make_pair_dataset(str(root), n_train=2, n_test=2, size=32)
    model = _train_model(root, tmp_path, save_best='lpips')
    with pytest.raises(ValueError, match=r"val.save_best: 'lpips' is not a computed validation metric"):
        model.validation(_val_loader(root), 1, None)


# ------------------------------------------------------------------------------------- no-reference (RTTS)
def test_rtts_yaml_evaluates_niqe_without_ground_truth(tmp_path):
    """The RTTS test YAML through the test pipeline's calls on a tiny GT-less folder: NIQE per image and mean."""
    opt = load_yaml_file(os.path.join(OPTIONS, 'test', 'test_MixCLDehazeNet_S_RTTS.yml'))
    assert opt['val']['metrics'] == {'niqe': {'type': 'calculate_niqe', 'crop_border': 0, 'better': 'lower'}}
    (ds_opt, ) = opt['datasets'].values()
    assert 'dataroot_gt' not in ds_opt
    folder = tmp_path / 'RTTS'
    rng = np.random.default_rng(0)
    for i in range(2):  # NIQE needs at least 192x192 (96x96 blocks at two scales)
        img = cv2.GaussianBlur(rng.integers(0, 256, (200, 208, 3), dtype=np.uint8), (5, 5), 2)
        folder.mkdir(exist_ok=True)
        assert cv2.imwrite(str(folder / f'{i:04d}.png'), img)
    # the YAML's dataset and metrics; a tiny unconditioned net with random weights stands in for the trained one
    ds_opt = dict(ds_opt, dataroot_lq=str(folder), phase='test')
    ds_opt.pop('feature_store')
    weights = tmp_path / 'net.pth'
    from basicsr.archs import build_network
    torch.save({'params': build_network(dict(TINY_NET)).state_dict()}, weights)
    opt.update(is_train=False, dist=False, rank=0, world_size=1, num_gpu=0, network_g=dict(TINY_NET))
    results = tmp_path / 'results'
    opt['path'].update(pretrain_network_g=str(weights), log=str(results), results_root=str(results),
                       visualization=str(results / 'visualization'))
    model = build_model(opt)
    loader = build_dataloader(build_dataset(ds_opt), ds_opt, num_gpu=0, dist=False)
    model.validation(loader, current_iter=opt['name'], tb_logger=None, save_img=True)  # as basicsr.test does
    with open(results / 'RTTS_per_image.csv', newline='') as f:
        rows = list(csv.DictReader(f))
    assert [r['image'] for r in rows] == ['0000', '0001']
    for r in rows:  # the value is BasicSR's NIQE of the saved output image
        out = cv2.imread(str(results / 'visualization' / 'RTTS' / f"{r['image']}_{opt['name']}.png"))
        assert float(r['niqe']) == pytest.approx(calculate_niqe(out, crop_border=0), abs=1e-5)
    assert model.metric_results['niqe'] == pytest.approx(np.mean([float(r['niqe']) for r in rows]), abs=1e-5)
    assert model.best_metric_results['RTTS']['niqe']['better'] == 'lower'


def test_per_image_csv_has_empty_cells_for_full_reference_metrics_without_gt(tmp_path):
    """PSNR next to NIQE on a GT-less folder: PSNR is skipped (no GT), NIQE still computed."""
    folder = tmp_path / 'lq'
    folder.mkdir()
    rng = np.random.default_rng(1)
    assert cv2.imwrite(str(folder / 'a.png'), rng.integers(0, 256, (192, 192, 3), dtype=np.uint8))
    weights = tmp_path / 'net.pth'
    from basicsr.archs import build_network
    torch.save({'params': build_network(dict(TINY_NET)).state_dict()}, weights)
    ds_opt = dict(name='nogt', type='CLIPPairedImageDataset', phase='test', dataroot_lq=str(folder),
                  io_backend=dict(type='disk'))
    opt = dict(name='t', model_type='MixCLDehazeModel', is_train=False, dist=False, rank=0, world_size=1, num_gpu=0,
               network_g=dict(TINY_NET), datasets={'test_1': ds_opt},
               path=dict(pretrain_network_g=str(weights), strict_load_g=True, log=str(tmp_path)),
               val=dict(save_img=False, metrics=dict(psnr=dict(type='calculate_psnr_dehaze'),
                                                     niqe=dict(type='calculate_niqe', crop_border=0, better='lower'))))
    model = build_model(opt)
    model.validation(build_dataloader(build_dataset(ds_opt), ds_opt, num_gpu=0, dist=False), 't', None)
    text = (tmp_path / 'nogt_per_image.csv').read_text().splitlines()
    assert text[0] == 'image,psnr,niqe' and re.fullmatch(r'a,,\d+\.\d{6}', text[1])
    assert set(model.metric_results) == {'niqe'}
