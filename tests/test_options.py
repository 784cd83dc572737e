"""Every MixDehazeNet / MixCLDehazeNet option file parses and builds its network, model and datasets.

Datasets are built on tiny stand-in data: every ``dataroot_*`` is rewritten to a generated temp dataset.
"""
import copy
import glob
import os
import re

import pytest
import torch
import yaml
from basicsr.archs import build_network
from basicsr.data import build_dataset
from basicsr.models import build_model
from basicsr.utils.options import ordered_yaml
from basicsr.utils.registry import DATASET_REGISTRY, LOSS_REGISTRY, METRIC_REGISTRY, MODEL_REGISTRY

from _train_helpers import ROOT, make_pair_dataset

OPTION_FILES = sorted(f for f in glob.glob(os.path.join(ROOT, 'options', '*', '*_Mix*.yml')) if 'demo' not in f)
TRAIN_FILES = [f for f in OPTION_FILES if os.sep + 'train' + os.sep in f]
TEST_FILES = [f for f in OPTION_FILES if os.sep + 'test' + os.sep in f]
IDS = [os.path.relpath(f, ROOT) for f in OPTION_FILES]


def load(path):
    with open(path) as f:
        return yaml.load(f, Loader=ordered_yaml()[0])


def to_plain(obj):
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [to_plain(v) for v in obj]
    return obj


TINY_CLIP_OPT = {}


@pytest.fixture(scope='module')
def tiny_root(tmp_path_factory):
    """Tiny pairs, a meta CSV with domain labels per split, and tiny-CLIP feature stores (clip_<split>.pt)."""
    import csv
    import importlib.util

    from _clip_helpers import make_tiny_clip, tiny_clip_opt
    from mixcl_arch.clip import CLIPPrior
    root = tmp_path_factory.mktemp('optdata')
    make_pair_dataset(str(root), n_train=2, n_test=2, size=40)
    clip_file = make_tiny_clip(root / 'tiny_clip.pt')
    prior = CLIPPrior.from_opt(tiny_clip_opt(clip_file))
    spec = importlib.util.spec_from_file_location('extract_clip_features',
                                                  os.path.join(ROOT, 'scripts', 'extract_clip_features.py'))
    extract = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(extract)
    for split in ('train', 'test'):
        names = sorted(os.listdir(root / split / 'hazy'))
        with open(root / split / 'meta.csv', 'w', newline='') as f:
            w = csv.writer(f)
            w.writerow(['hazy', 'gt', 'domain'])
            w.writerows([n, n, ('indoor', 'outdoor')[i % 2]] for i, n in enumerate(names))
        extract.extract(prior, str(root / split / 'hazy'), str(root / f'clip_{split}.pt'), num_workers=0,
                        progress=False)
    TINY_CLIP_OPT.update(tiny_clip_opt(clip_file))
    return root


def test_expected_option_files_exist():
    names = {os.path.basename(f) for f in OPTION_FILES}
    for v in 'TSBL':
        assert f'train_MixCLDehazeNet_{v}_RESIDE6K.yml' in names
    for n in ('train_MixDehazeNet_S_RESIDE6K.yml', 'train_MixCLDehazeNet_S_ITS.yml', 'train_MixCLDehazeNet_S_OTS.yml',
              'train_MixCLDehazeNet_S_RESIDE6K_oracle.yml', 'test_MixCLDehazeNet_S_RESIDE6K.yml',
              'test_MixCLDehazeNet_S_SOTS_indoor.yml', 'test_MixCLDehazeNet_S_SOTS_outdoor.yml',
              'test_MixCLDehazeNet_S_folder.yml'):
        assert n in names


@pytest.mark.parametrize('path', OPTION_FILES, ids=IDS)
def test_option_file_is_well_formed(path):
    opt = load(path)
    assert opt['model_type'] in MODEL_REGISTRY
    assert re.fullmatch(r'[A-Za-z0-9_]+', opt['name'])
    assert opt['network_g']['data_range'] == 'unit'
    for line in open(path):
        assert len(line.rstrip('\n')) <= 120
    for ds in opt['datasets'].values():
        for key in ('dataroot_gt', 'dataroot_lq', 'feature_store', 'meta_file'):
            if ds.get(key):
                assert ds[key].startswith('datasets/'), (key, ds[key])
    for metric in (opt.get('val') or {}).get('metrics') or {}:
        assert opt['val']['metrics'][metric]['type'] in METRIC_REGISTRY
    if path in TRAIN_FILES:
        train = opt['train']
        assert set(opt['datasets']) == {'train', 'val'}
        assert train['pixel_opt']['type'] == 'L1Loss' and 'cr_opt' not in train
        assert '#   type: ContrastLossRes' in open(path).read() and 'ContrastLossRes' in LOSS_REGISTRY
        assert train['optim_g']['type'] == 'AdamW' and train['scheduler']['type'] == 'CosineAnnealingRestartLR'
        assert train['scheduler']['periods'] == [train['total_iter']]
        tr = opt['datasets']['train']
        assert tr['gt_size'] == 256 and tr['use_hflip'] is True
        assert opt['val']['val_freq'] == 5000
        assert set(opt['val']['metrics']) == {'psnr', 'ssim'}
        m = re.fullmatch(r'.*_B(\d+)G1_(\d+)k', opt['name'])
        assert m and int(m.group(1)) == tr['batch_size_per_gpu'] and abs(int(m.group(2)) * 1000
                                                                         - train['total_iter']) < 1000


def test_reside6k_reference_recipe():
    for path in TRAIN_FILES:
        if 'RESIDE6K' not in path:
            continue
        opt = load(path)
        tr, train = opt['datasets']['train'], opt['train']
        assert tr['batch_size_per_gpu'] == 16 and tr['use_rot'] is False
        assert train['optim_g']['lr'] == pytest.approx(1e-4)
        assert train['scheduler']['eta_min'] == pytest.approx(1e-6)
        assert train['total_iter'] == 1000 * 6000 // 16


def _runtime_opt(opt, tmp_path, is_train):
    """What parse_options adds, on CPU, with paths in tmp_path."""
    opt = copy.deepcopy(to_plain(opt))
    opt.update(is_train=is_train, dist=False, rank=0, world_size=1, num_gpu=0, auto_resume=False)
    exp = tmp_path / 'exp'
    opt['path'].update(models=str(exp / 'models'), training_states=str(exp / 'states'), log=str(exp),
                       visualization=str(exp / 'vis'))
    return opt


@pytest.mark.parametrize('path', OPTION_FILES, ids=IDS)
def test_option_file_builds_network_and_model(path, tmp_path):
    opt = load(path)
    net = build_network(to_plain(opt['network_g']))
    assert net.data_range == 'unit'
    n_params = sum(p.numel() for p in net.parameters())
    assert n_params > 1e5
    rt = _runtime_opt(opt, tmp_path, is_train=path in TRAIN_FILES)
    if path in TEST_FILES:
        # the test YAML's checkpoint is produced by training; stand in with these random weights
        weights = tmp_path / 'net.pth'
        torch.save({'params': net.state_dict()}, weights)
        rt['path']['pretrain_network_g'] = str(weights)
    model = build_model(rt)
    assert type(model).__name__ == 'MixCLDehazeModel'
    assert model.num_cond == (0 if opt['network_g']['type'] == 'MixDehazeNet' else 1)
    if path in TEST_FILES:
        assert all(torch.equal(v, net.state_dict()[k]) for k, v in model.net_g.state_dict().items())
    else:
        assert type(model.optimizer_g).__name__ == 'AdamW' and model.cri_cr is None
        assert model.schedulers[0].periods == [opt['train']['total_iter']]


def _standin_dataset_opt(ds, tiny_root, phase):
    ds = copy.deepcopy(to_plain(ds))
    ds['phase'] = phase
    split = 'train' if phase == 'train' else 'test'
    if ds.get('dataroot_gt'):
        ds['dataroot_gt'] = str(tiny_root / split / 'GT')
    if ds.get('dataroot_lq'):
        ds['dataroot_lq'] = str(tiny_root / split / 'hazy')
    if phase == 'train':
        ds.update(gt_size=32, num_worker_per_gpu=0, batch_size_per_gpu=2)
    return ds


@pytest.mark.parametrize('path', OPTION_FILES, ids=IDS)
def test_option_file_builds_datasets_on_standin_data(path, tiny_root):
    opt = load(path)
    for phase_key, ds in opt['datasets'].items():
        assert ds['type'] in DATASET_REGISTRY, (
            f"{ds['type']} is not registered: mixcl_arch/data/clip_paired_image_dataset.py is needed by {path}")
        ds_opt = _standin_dataset_opt(ds, tiny_root, phase_key.split('_')[0])
        split = 'train' if phase_key == 'train' else 'test'
        if ds_opt.get('feature_store'):
            # same keys as the YAML, but a store made by scripts/extract_clip_features.py with a tiny CLIP; the
            # provenance check runs against that tiny CLIP's options (the YAML's ViT-B-32 weights are not here)
            ds_opt['feature_store'] = str(tiny_root / f'clip_{split}.pt')
            ds_opt['clip'] = dict(TINY_CLIP_OPT)
        if ds_opt.get('meta_file'):
            ds_opt['meta_file'] = str(tiny_root / split / 'meta.csv')
        dataset = build_dataset(ds_opt)
        assert len(dataset) == 2
        item = dataset[0]
        assert item['lq'].shape[0] == 3 and ('gt' in item) == bool(ds_opt.get('dataroot_gt'))
        if phase_key == 'train':
            assert item['lq'].shape[-2:] == (32, 32)
        if ds_opt.get('cond_source', 'store' if ds_opt.get('feature_store') else 'none') != 'none':
            assert item['cond'].shape == (opt['network_g'].get('num_cond', 1), 512)
            assert torch.isclose(item['text'].norm(), torch.tensor(1.0), atol=1e-3)


def test_top_level_clip_reaches_dataset_provenance_check(tiny_root):
    """The entry points copy ``clip:`` into each dataset, so a store made with another CLIP fails at construction."""
    from mixcl_arch.utils.basicsr_fixes import propagate_clip_options
    opt = to_plain(load(os.path.join(ROOT, 'options', 'train', 'train_MixCLDehazeNet_S_RESIDE6K.yml')))
    propagate_clip_options(opt)
    ds = opt['datasets']['train']
    assert ds['clip']['model'] == 'ViT-B-32' and 'cond_fallback' not in ds['clip']
    ds_opt = _standin_dataset_opt(ds, tiny_root, 'train')
    ds_opt['feature_store'] = str(tiny_root / 'clip_train.pt')
    with pytest.raises(ValueError, match=r"does not match the CLIP options: model: store 'mixcl-tiny-clip'"):
        build_dataset(ds_opt)


DEMO_AND_BASELINE_FILES = sorted(f for f in glob.glob(os.path.join(ROOT, 'options', '*', '*.yml'))
                                 if f not in OPTION_FILES)


@pytest.mark.parametrize('path', DEMO_AND_BASELINE_FILES, ids=[os.path.relpath(f, ROOT) for f in
                                                                DEMO_AND_BASELINE_FILES])
def test_other_option_files_parse_and_build_network_and_model(path, tmp_path):
    """Demo and baseline YAMLs (their data exists only after make_demo_data): sections, registry, net, model."""
    opt = load(path)
    assert opt['model_type'] in MODEL_REGISTRY and re.fullmatch(r'[A-Za-z0-9_]+', opt['name'])
    assert all(len(line.rstrip('\n')) <= 120 for line in open(path))
    for ds in opt['datasets'].values():
        assert ds['type'] in DATASET_REGISTRY
    net = build_network(to_plain(opt['network_g']))
    rt = _runtime_opt(opt, tmp_path, is_train=os.sep + 'train' + os.sep in path)
    if not rt['is_train']:
        weights = tmp_path / 'net.pth'
        torch.save({'params': net.state_dict()}, weights)
        rt['path']['pretrain_network_g'] = str(weights)
    model = build_model(rt)
    assert sum(p.numel() for p in model.net_g.parameters()) == sum(p.numel() for p in net.parameters())
