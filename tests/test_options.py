"""Every MixDehazeNet / MixCLDehazeNet option file parses and builds its network, model and datasets.

Datasets are built on tiny stand-in data: every ``dataroot_*`` is rewritten to a generated temp dataset. The YAML's
own ``clip:`` section is used as is: it is checked by the CLIP prior up to the point where the weights are loaded,
and each feature store is a tiny-CLIP store carrying the provenance an extraction with that section records, so the
conditioner's provenance check runs against the real options. The top-level ``conditioning:`` section is parsed
(:class:`~mixcl_arch.conditioning.config.ConditioningConfig`) and its conditioner fed with the datasets' batches.
"""
import copy
import glob
import os
import re

import pytest
import torch
from basicsr.archs import build_network
from basicsr.data import build_dataset
from basicsr.models import build_model
from basicsr.utils.registry import DATASET_REGISTRY, LOSS_REGISTRY, METRIC_REGISTRY, MODEL_REGISTRY

from _train_helpers import ROOT, make_pair_dataset
from mixcl_arch.utils.options import load_yaml_file

OPTION_FILES = sorted(f for f in glob.glob(os.path.join(ROOT, 'options', '*', '*_Mix*.yml')) if 'demo' not in f)
TRAIN_FILES = [f for f in OPTION_FILES if os.sep + 'train' + os.sep in f]
TEST_FILES = [f for f in OPTION_FILES if os.sep + 'test' + os.sep in f]
IDS = [os.path.relpath(f, ROOT) for f in OPTION_FILES]
# the first line of every file says which kind it is (LEAN vs the reference recipe _ref, ...)
KIND = re.compile(r'# (LEAN RECIPE|REFERENCE RECIPE \(_ref\)|ADAPTED RECIPE|FAST PATH|ABLATION|FOLDER|'
                  r'NO-REFERENCE)[ :]')
LEAN_KINDS = ('LEAN RECIPE', 'FAST PATH', 'ABLATION')


def check_conditioning_layout(path, opt):
    """The top-level conditioning layout: one stated source for the run, datasets with data keys only.

    A conditioned model names its ``conditioning.source``; its datasets carry what that source reads (source store:
    every dataset a ``feature_store``; oracle: a ``meta_file`` with domain labels; clip: no store, which would go
    unused). An unconditioned model has neither ``conditioning:`` nor ``clip:``.
    """
    from mixcl_arch.conditioning.config import ConditioningConfig
    cfg = ConditioningConfig.from_options(opt)  # an old-layout key fails here, naming its new place
    datasets = list(opt['datasets'].values())
    for ds in datasets:
        assert not [k for k in ds if k in ('clip', 'cliphaze_cond') or k.startswith('cond_')], (path, dict(ds))
    if opt['model_type'] in ('DehazeModel', 'DehazeNetModel'):
        assert 'conditioning' not in opt and 'clip' not in opt, path
        return
    assert opt['conditioning']['source'] == cfg.source, path  # stated, not the default
    needs = {'store': 'feature_store', 'oracle': 'meta_file'}.get(cfg.source)
    if needs:
        assert all(ds.get(needs) for ds in datasets), (path, needs)
    if cfg.source == 'clip':
        assert not any(ds.get('feature_store') for ds in datasets), path


def kind(path):
    with open(path) as f:
        m = KIND.match(f.readline())
    return m.group(1) if m else None


def to_plain(obj):
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [to_plain(v) for v in obj]
    return obj


class StandIn:
    """Tiny data for the option files: pairs, meta CSVs with domain labels, the tiny CLIP and its feature stores."""

    def __init__(self, root):
        import csv
        import importlib.util

        from _clip_helpers import make_tiny_clip
        self.root = root
        make_pair_dataset(str(root), n_train=2, n_test=2, size=40)
        self.clip_file = make_tiny_clip(root / 'tiny_clip.pt')
        spec = importlib.util.spec_from_file_location('extract_clip_features',
                                                      os.path.join(ROOT, 'scripts', 'extract_clip_features.py'))
        self.extract = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(self.extract)
        for split in ('train', 'test'):
            names = sorted(os.listdir(root / split / 'hazy'))
            with open(root / split / 'meta.csv', 'w', newline='') as f:
                w = csv.writer(f)
                w.writerow(['hazy', 'gt', 'domain'])
                w.writerows([n, n, ('indoor', 'outdoor')[i % 2]] for i, n in enumerate(names))
        self._stores = {}

    def store(self, split, clip_opt=None, **tiny_kw):
        """Feature store of ``split`` extracted by the tiny CLIP (``tiny_kw``: more tiny CLIP options).

        With ``clip_opt`` (a YAML ``clip:`` section) the tiny CLIP uses its domains, templates and prompt sets, and
        the store is re-labelled with the provenance an extraction with ``clip_opt`` records (model, tag, the tag's
        QuickGELU): what ``scripts/extract_clip_features.py -opt <yaml>`` writes, with tiny features.
        """
        import open_clip

        from _clip_helpers import tiny_clip_opt
        from mixcl_arch.clip.prior import CLIPPrior
        from mixcl_arch.clip.store import FeatureStore
        clip_opt = to_plain(clip_opt or {})
        tiny = tiny_clip_opt(self.clip_file, **{k: clip_opt[k] for k in ('domains', 'templates', 'prompt_sets')
                                                if k in clip_opt})
        tiny.update(tiny_kw)
        key = repr((split, sorted(tiny.items()), sorted(clip_opt.items())))
        if key in self._stores:
            return self._stores[key]
        path = str(self.root / f'clip_{split}_{len(self._stores)}.pt')
        self.extract.extract(CLIPPrior.from_opt(tiny), str(self.root / split / 'hazy'), path, num_workers=0,
                             progress=False)
        if clip_opt:
            pre = str(clip_opt['pretrained'])
            assert not os.path.isfile(pre), 'stand-in stores are made for open_clip tags only'
            model = str(clip_opt['model']).replace('/', '-')
            quick_gelu = clip_opt.get('quick_gelu')
            if quick_gelu is None:  # what CLIPPrior records for a tag: open_clip's setting of that tag
                quick_gelu = bool(open_clip.get_pretrained_cfg(model, pre).get('quick_gelu', False))
            store = FeatureStore.load(path)
            store.meta.update(model=model, pretrained=pre, pretrained_kind='tag', pretrained_sha256=None,
                              model_cfg=None, quick_gelu=quick_gelu)
            store.save(path)
        self._stores[key] = path
        return path

    def density_store(self, split, cliphaze):
        """Feature store of ``split`` with CLIPHazeNet's density maps and embeddings for the options ``cliphaze``
        (``scripts/extract_clip_features.py --density``): by the tiny CLIP, or the DCP stand-in (NOT CLIP)."""
        from _clip_helpers import tiny_clip_opt
        from mixcl_arch.clip.prior import CLIPPrior
        key = repr((split, cliphaze))
        if key not in self._stores:
            path = str(self.root / f'density_{split}_{len(self._stores)}.pt')
            standin = cliphaze.density_source == 'dcp' and cliphaze.embedding_source == 'standin'
            prior = None if standin else CLIPPrior.from_opt(tiny_clip_opt(self.clip_file))
            self.extract.extract(prior, str(self.root / split / 'hazy'), path, num_workers=0, progress=False,
                                 meta_file=str(self.root / split / 'meta.csv'), cond=cliphaze)
            self._stores[key] = path
        return self._stores[key]


@pytest.fixture(scope='module')
def standin(tmp_path_factory):
    return StandIn(tmp_path_factory.mktemp('optdata'))


@pytest.fixture(scope='module')
def resnet18_file(tmp_path_factory):
    """Random ResNet-18 weights: the reference's CR loss (ResNet-152, 230 MB) built small for the option tests."""
    import torchvision
    path = tmp_path_factory.mktemp('resnet') / 'resnet18.pth'
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    return str(path)


class WeightsReached(Exception):
    """Raised in place of resolving the CLIP weights: every check before them passed."""


def build_prior_until_weights(clip_opt, monkeypatch):
    """``CLIPPrior.from_opt(clip_opt)`` up to the weights: raises WeightsReached when all earlier checks pass."""
    import mixcl_arch.clip.prior as prior_module

    def stop(*args, **kwargs):
        raise WeightsReached(args)

    monkeypatch.setattr(prior_module, 'resolve_weights', stop)
    prior_module.CLIPPrior.from_opt(to_plain(clip_opt))


def test_expected_option_files_exist():
    names = {os.path.basename(f) for f in OPTION_FILES}
    for v in 'TSBL':
        assert f'train_MixCLDehazeNet_{v}_RESIDE6K.yml' in names
    for n in ('train_MixDehazeNet_S_RESIDE6K.yml', 'train_MixCLDehazeNet_S_ITS.yml', 'train_MixCLDehazeNet_S_OTS.yml',
              'train_MixCLDehazeNet_S_RESIDE6K_oracle.yml', 'test_MixCLDehazeNet_S_RESIDE6K.yml',
              'test_MixCLDehazeNet_S_SOTS_indoor.yml', 'test_MixCLDehazeNet_S_SOTS_outdoor.yml',
              'test_MixCLDehazeNet_S_folder.yml', 'test_MixCLDehazeNet_S_RTTS.yml'):
        assert n in names
    for d in ('OHAZE', 'IHAZE'):
        assert {f'train_MixCLDehazeNet_S_{d}.yml', f'test_MixCLDehazeNet_S_{d}.yml'} <= names


@pytest.mark.parametrize('path', OPTION_FILES, ids=IDS)
def test_option_file_is_well_formed(path):
    opt = load_yaml_file(path)
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
    assert kind(path), f'{path}: line 1 must say which kind of recipe the file is ({KIND.pattern})'
    check_conditioning_layout(path, opt)
    if path in TRAIN_FILES:
        train = opt['train']
        tr = opt['datasets']['train']
        assert set(opt['datasets']) == {'train', 'val'}
        assert train['optim_g']['type'] == 'AdamW' and train['scheduler']['type'] == 'CosineAnnealingRestartLR'
        assert train['scheduler']['periods'] == [train['total_iter']]
        assert tr['use_hflip'] is True and {'psnr', 'ssim'} <= set(opt['val']['metrics'])
        if kind(path) in LEAN_KINDS:
            assert train['pixel_opt']['type'] == 'L1Loss' and 'cr_opt' not in train
            assert '#   type: ContrastLossRes' in open(path).read() and 'ContrastLossRes' in LOSS_REGISTRY
            assert tr['gt_size'] == 256 and opt['val']['val_freq'] == 5000 and 'save_best' not in opt['val']
        else:  # reference / adapted recipes: tests/test_reference_recipes.py checks their values
            assert train['cr_opt']['type'] == 'ContrastLossRes' and train['amp'] == 'fp16'
            assert opt['val']['save_best'] == 'psnr'
        m = re.fullmatch(r'.*_B(\d+)G1_(\d+)k', opt['name'])
        assert m and int(m.group(1)) == tr['batch_size_per_gpu'] and abs(int(m.group(2)) * 1000
                                                                         - train['total_iter']) < 1000


def test_reside6k_reference_recipe():
    for path in TRAIN_FILES:
        if 'RESIDE6K' not in path:
            continue
        opt = load_yaml_file(path)
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


def _standin_conditioning(rt, standin):
    """The run's conditioning on stand-in data: each dataset's ``feature_store`` becomes a store holding what the
    YAML's own store would (tiny-CLIP features under the YAML's CLIP provenance, or CLIPHazeNet's DCP stand-in maps),
    and source clip runs the tiny CLIP (the YAML's ``clip:`` itself is checked up to the weights below)."""
    from _clip_helpers import tiny_clip_opt
    from mixcl_arch.conditioning.config import ConditioningConfig
    cfg = ConditioningConfig.from_options(rt)
    for phase, ds in rt['datasets'].items():
        if ds.get('feature_store'):
            split = 'train' if phase == 'train' else 'test'
            ds['feature_store'] = standin.density_store(split, cfg.cliphaze) if 'cliphaze_cond' in rt \
                else standin.store(split, rt['clip'])
    if cfg.source == 'clip' and 'clip' in rt:
        rt['clip'] = tiny_clip_opt(standin.clip_file)
    return rt


@pytest.fixture(scope='module')
def random_weights(tmp_path_factory):
    """network_g options -> (file with its random weights, state dict), made once per distinct network."""
    folder, made = tmp_path_factory.mktemp('weights'), {}

    def get(net_opt):
        key = repr(sorted(net_opt.items()))
        if key not in made:
            net = build_network(dict(net_opt))
            assert net.data_range == 'unit' and sum(p.numel() for p in net.parameters()) > 1e5
            path = folder / f'net{len(made)}.pth'
            torch.save({'params': net.state_dict()}, path)
            made[key] = (str(path), net.state_dict())
        return made[key]
    return get


@pytest.mark.parametrize('path', OPTION_FILES, ids=IDS)
def test_option_file_builds_network_and_model(path, tmp_path, resnet18_file, random_weights, standin, monkeypatch):
    from basicsr.losses import build_loss
    opt = load_yaml_file(path)
    if 'fusion_size' in opt['network_g']:  # textemb / parametric_linear maps hold 0.2-0.8 G parameters at full size
        opt['network_g']['fusion_size'] = 8
    weights, state = random_weights(to_plain(opt['network_g']))
    rt = _standin_conditioning(_runtime_opt(opt, tmp_path, is_train=path in TRAIN_FILES), standin)
    if path in TEST_FILES:
        # the test YAML's checkpoint is produced by training; stand in with random weights
        rt['path']['pretrain_network_g'] = weights
    cr_opt = rt['train'].get('cr_opt') if path in TRAIN_FILES else None
    if cr_opt:
        # without the ResNet-152 file the run stops at model construction (CR loss), naming the file and the option
        monkeypatch.setattr(torch.hub, 'get_dir', lambda: str(tmp_path / 'hub'))
        with pytest.raises(FileNotFoundError, match=r'resnet152-394f9c45\.pth.*resnet_path'):
            build_loss(dict(cr_opt))
        cr_opt.update(depth=18, resnet_path=resnet18_file)
    model = build_model(rt)
    plain = opt['network_g']['type'] == 'MixDehazeNet'
    assert type(model).__name__ == ('DehazeModel' if plain else 'MixCLDehazeModel')
    assert model.net_g.num_cond == (0 if plain else 1)
    if path in TEST_FILES:
        assert all(torch.equal(v, state[k]) for k, v in model.net_g.state_dict().items())
    else:
        assert type(model.optimizer_g).__name__ == 'AdamW'
        assert model.schedulers[0].periods == [opt['train']['total_iter']]
        assert (type(model.cri_cr).__name__ == 'ContrastLossRes' and model.cri_cr.loss_weight == 0.1) if cr_opt \
            else model.cri_cr is None
        assert (model.scaler is not None) == (opt['train'].get('amp') == 'fp16')


def _standin_dataset_opt(ds, root, phase):
    ds = copy.deepcopy(to_plain(ds))
    ds['phase'] = phase
    split = 'train' if phase == 'train' else 'test'
    for key, sub in (('dataroot_gt', 'GT'), ('dataroot_lq', 'hazy'), ('meta_file', 'meta.csv')):
        if ds.get(key):
            ds[key] = str(root / split / sub)
    if ds.get('center_crop'):
        ds['center_crop'] = 32
    if phase == 'train':
        ds.update(gt_size=32, num_worker_per_gpu=0, batch_size_per_gpu=2)
    return ds


CLIP_FILES = [f for f in OPTION_FILES if load_yaml_file(f).get('clip')]


@pytest.mark.parametrize('path', CLIP_FILES, ids=[os.path.relpath(f, ROOT) for f in CLIP_FILES])
def test_clip_section_is_valid_up_to_the_weights(path, monkeypatch):
    """The YAML's own ``clip:`` passes every CLIPPrior check before the weights (model, domains, templates, keys)."""
    with pytest.raises(WeightsReached):
        build_prior_until_weights(load_yaml_file(path)['clip'], monkeypatch)


def test_a_template_without_placeholder_is_caught_before_the_weights(monkeypatch):
    """The old oracle YAML's 'a photo of a train' (no {}) fails the template check, before any weights are needed."""
    path = os.path.join(ROOT, 'options', 'train', 'train_MixCLDehazeNet_S_RESIDE6K_oracle.yml')
    clip_opt = to_plain(load_yaml_file(path)['clip'])
    with pytest.raises(WeightsReached):
        build_prior_until_weights(clip_opt, monkeypatch)
    clip_opt['templates'] = ['a photo of a train']
    with pytest.raises(ValueError, match=r'exactly one "\{\}" placeholder'):
        build_prior_until_weights(clip_opt, monkeypatch)


def _net_for(network_g):
    """The YAML's network at its smallest size (same ``num_cond`` / ``text_dim``: what the conditioner reads)."""
    net_opt = dict(to_plain(network_g))
    if 'variant' in net_opt:
        net_opt['variant'] = 'T'
    if 'fusion_size' in net_opt:
        net_opt['fusion_size'] = 8
    return build_network(net_opt)


@pytest.mark.parametrize('path', OPTION_FILES, ids=IDS)
def test_option_file_builds_datasets_and_conditioning_on_standin_data(path, standin):
    """Each dataset builds on stand-in data and its batch, with the YAML's top-level conditioning, gives the net
    what it takes: the store's rows (source store, provenance checked against the YAML's ``clip:``), the label's
    text feature (oracle) or the tiny CLIP online (clip)."""
    from torch.utils.data import default_collate

    from _clip_helpers import tiny_clip_opt
    from mixcl_arch.conditioning.conditioner import CondBatch, build_conditioner
    from mixcl_arch.conditioning.config import ClipOptions, ConditioningConfig
    opt = to_plain(load_yaml_file(path))
    cfg = ConditioningConfig.from_options(opt)
    net = _net_for(opt['network_g'])
    for phase_key, ds in opt['datasets'].items():
        assert ds['type'] in DATASET_REGISTRY, (
            f"{ds['type']} is not registered: mixcl_arch/data/clip_paired_image_dataset.py is needed by {path}")
        ds_opt = _standin_dataset_opt(ds, standin.root, phase_key.split('_')[0])
        split = 'train' if phase_key == 'train' else 'test'
        stores = []
        if ds_opt.get('feature_store'):
            # a store as extracted with the YAML's clip section; the conditioner checks it against that section
            ds_opt['feature_store'] = standin.store(split, opt['clip'])
            stores = [ds_opt['feature_store']]
        dataset = build_dataset(ds_opt)
        assert len(dataset) == 2
        item = dataset[0]
        assert item['lq'].shape[0] == 3 and ('gt' in item) == bool(ds_opt.get('dataroot_gt'))
        if phase_key == 'train' or ds_opt.get('center_crop'):
            assert item['lq'].shape[-2:] == (32, 32)
        run_cfg = cfg.replace(clip=ClipOptions.from_dict(tiny_clip_opt(standin.clip_file))) \
            if cfg.source == 'clip' else cfg
        cond = build_conditioner(run_cfg, net, stores=stores)
        if net.num_cond == 0:
            assert cond is None
            continue
        batch = default_collate([dataset[0], dataset[1]])
        vectors = cond(CondBatch.from_data(batch, batch['lq']))
        assert cond.source == cfg.source and vectors.shape == (2, net.num_cond, 512)
        assert torch.allclose(vectors.norm(dim=-1), torch.ones(2, net.num_cond), atol=1e-3)


def test_store_of_other_templates_is_rejected_for_the_yaml(standin):
    """A store extracted with another (valid) prompt fails the provenance check of the YAML's clip section when the
    run's conditioner is built (before any training)."""
    from mixcl_arch.conditioning.conditioner import build_conditioner
    from mixcl_arch.conditioning.config import ConditioningConfig
    path = os.path.join(ROOT, 'options', 'train', 'train_MixCLDehazeNet_S_RESIDE6K_ref.yml')
    opt = to_plain(load_yaml_file(path))
    store = standin.store('train', dict(opt['clip'], templates=['a picture of a {}']))
    cfg = ConditioningConfig.from_options(opt)
    assert cfg.source == 'store'
    with pytest.raises(ValueError, match=r"templates: store \['a picture of a \{\}'\], options \['a photo of a"):
        build_conditioner(cfg, _net_for(opt['network_g']), stores=[store])
    assert build_conditioner(cfg, _net_for(opt['network_g']), stores=[standin.store('train', opt['clip'])])


@pytest.mark.parametrize('store_quick_gelu, yaml_quick_gelu, rejected', [
    (False, True, True),  # the case: a store made without QuickGELU, a YAML with it
    (True, None, True),  # the state-dict file without quick_gelu: true would give other features
    (False, None, False),
    (True, True, False),
])
def test_quick_gelu_is_part_of_the_store_provenance(standin, store_quick_gelu, yaml_quick_gelu, rejected):
    from _clip_helpers import tiny_clip_opt
    from mixcl_arch.clip.store import FeatureStore
    from mixcl_arch.conditioning.conditioner import build_conditioner
    from mixcl_arch.conditioning.config import ConditioningConfig
    store = standin.store('train', quick_gelu=store_quick_gelu)
    assert FeatureStore.load(store).meta['quick_gelu'] is store_quick_gelu
    clip_opt = tiny_clip_opt(standin.clip_file)  # a state-dict file: QuickGELU only when the option says so
    if yaml_quick_gelu is not None:
        clip_opt['quick_gelu'] = yaml_quick_gelu
    cfg = ConditioningConfig.from_options({'clip': clip_opt, 'conditioning': {'source': 'store'}})
    net = _net_for({'type': 'MixCLDehazeNet', 'variant': 'T', 'text_dim': 512, 'num_cond': 1, 'data_range': 'unit'})
    if rejected:
        with pytest.raises(ValueError, match=rf'quick_gelu: store {store_quick_gelu}, options {bool(yaml_quick_gelu)}'):
            build_conditioner(cfg, net, stores=[store])
    else:
        assert build_conditioner(cfg, net, stores=[store]).source == 'store'


# The real training entry point, recording the conditioning MixCLDehazeNet receives in its first training and first
# validation forward (cond_train.pth, cond_val.pth): what the model's conditioner made of the YAML's top-level section.
RECORD_ENTRY = '''
import sys
sys.path.insert(0, {root!r})
import torch
import mixcl_arch
from mixcl_arch.archs.mixdehazenet_arch import MixCLDehazeNet

_forward = MixCLDehazeNet.forward


def forward(self, x, text=None):
    name = 'cond_train.pth' if self.training else 'cond_val.pth'
    if name not in RECORDED:
        RECORDED.add(name)
        torch.save(text.detach().cpu(), name)
    return _forward(self, x, text)


RECORDED = set()
MixCLDehazeNet.forward = forward
from mixcl_arch.train import main
main()
'''


def _oracle_run_opt(tmp_path):
    """A tiny MixCLDehazeNet run on labelled pairs (train: indoor, val: outdoor) with ``conditioning.source: oracle``
    and no store: each image gets the stand-in text feature of its label; no dataset carries a clip: section."""
    import csv

    from _train_helpers import tiny_train_opt
    root = tmp_path / 'data'
    make_pair_dataset(str(root), n_train=2, n_test=1, size=32)
    for split, domain in (('train', 'indoor'), ('test', 'outdoor')):
        with open(root / split / 'meta.csv', 'w', newline='') as f:
            w = csv.writer(f)
            w.writerow(['hazy', 'gt', 'domain'])
            w.writerows([n, n, domain] for n in sorted(os.listdir(root / split / 'hazy')))
    net = dict(type='MixCLDehazeNet', embed_dims=[8, 16, 16, 16, 8], depths=[1] * 5, data_range='unit')
    opt = tiny_train_opt(str(root), total_iter=1, periods=1, save_freq=1, val_freq=1, net=net)
    for phase, split in (('train', 'train'), ('val', 'test')):
        ds = opt['datasets'][phase]
        opt['datasets'][phase] = dict(
            {k: v for k, v in ds.items() if k not in ('type', 'filename_tmpl', 'scale')}, type='CLIPPairedImageDataset',
            meta_file=str(root / split / 'meta.csv'))
    opt['model_type'] = 'MixCLDehazeModel'
    opt['val']['metrics'] = {'psnr': {'type': 'calculate_psnr_dehaze'}}
    opt['logger']['use_tb_logger'] = False
    opt.update(clip={'model': 'ViT-B-32', 'pretrained': 'openai'}, conditioning={'source': 'oracle'})
    return opt


def test_top_level_conditioning_reaches_the_model_through_the_entry_point(tmp_path):
    """train.py hands the model the top-level ``conditioning:`` (no dataset carries conditioning or clip options):
    source oracle gives the net each image's label vector in training and validation. Without it the model would
    run source clip, which needs CLIP weights that do not exist here."""
    from _train_helpers import run_entry, write_yaml
    from mixcl_arch.data.clip_data_util import standin_text_feature
    opt = _oracle_run_opt(tmp_path)
    assert not any(k == 'clip' or k.startswith('cond') for ds in opt['datasets'].values() for k in ds)
    entry = tmp_path / 'record_train.py'
    entry.write_text(RECORD_ENTRY.format(root=ROOT))
    log = run_entry(str(entry), ['-opt', write_yaml(opt, tmp_path / 'oracle.yml')], cwd=str(tmp_path))
    assert 'datasets:[' in log and 'conditioning:[' in log
    datasets_dump = log[log.index('  datasets:['):log.index('  network_g:[')]
    assert 'clip:[' not in datasets_dump and 'cond_' not in datasets_dump
    for name, domain, other in (('cond_train.pth', 'indoor', 'outdoor'), ('cond_val.pth', 'outdoor', 'indoor')):
        cond = torch.load(tmp_path / name, weights_only=True)
        assert cond.shape[1:] == (1, 512)
        for row in cond[:, 0]:
            assert torch.allclose(row, standin_text_feature(domain, 512), atol=1e-6)
            assert not torch.allclose(row, standin_text_feature(other, 512), atol=1e-3)


@pytest.mark.parametrize('old_key, new_key', [
    ('datasets.train.cond_source', 'conditioning.source'),
    ('clip.cond_mode', 'conditioning.mode'),
])
def test_an_old_conditioning_key_fails_at_start_naming_its_new_place(tmp_path, old_key, new_key):
    """An option file with a key of the old layout stops train.py before any work, naming the file, the key and
    where the setting lives now."""
    import subprocess
    import sys

    from _train_helpers import TRAIN, write_yaml
    opt = _oracle_run_opt(tmp_path)
    section, _, name = old_key.rpartition('.')
    target = opt
    for part in section.split('.'):
        target = target[part]
    target[name] = 'store' if name == 'cond_source' else 'hard'
    yml = write_yaml(opt, tmp_path / 'old.yml')
    proc = subprocess.run([sys.executable, TRAIN, '-opt', yml], cwd=str(tmp_path), capture_output=True, text=True,
                          env=dict(os.environ, OMP_NUM_THREADS='1'), timeout=240)
    assert proc.returncode != 0
    assert f'{yml}: {old_key}: this setting moved to {new_key}' in proc.stderr
    assert not (tmp_path / 'experiments').exists()  # failed before BasicSR made the run folder


DEMO_AND_BASELINE_FILES = sorted(f for f in glob.glob(os.path.join(ROOT, 'options', '*', '*.yml'))
                                 if f not in OPTION_FILES)


@pytest.mark.parametrize('path', DEMO_AND_BASELINE_FILES, ids=[os.path.relpath(f, ROOT) for f in
                                                                DEMO_AND_BASELINE_FILES])
def test_other_option_files_parse_and_build_network_and_model(path, tmp_path, standin):
    """Demo and baseline YAMLs (their data exists only after make_demo_data): sections, registry, net, model."""
    opt = load_yaml_file(path)
    assert opt['model_type'] in MODEL_REGISTRY and re.fullmatch(r'[A-Za-z0-9_]+', opt['name'])
    assert all(len(line.rstrip('\n')) <= 120 for line in open(path))
    for ds in opt['datasets'].values():
        assert ds['type'] in DATASET_REGISTRY
    check_conditioning_layout(path, opt)
    net = build_network(to_plain(opt['network_g']))
    rt = _standin_conditioning(_runtime_opt(opt, tmp_path, is_train=os.sep + 'train' + os.sep in path), standin)
    if not rt['is_train']:
        weights = tmp_path / 'net.pth'
        torch.save({'params': net.state_dict()}, weights)
        rt['path']['pretrain_network_g'] = str(weights)
    model = build_model(rt)
    assert sum(p.numel() for p in model.net_g.parameters()) == sum(p.numel() for p in net.parameters())
