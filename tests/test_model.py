"""MixCLDehazeModel (DehazeModel + conditioning) built from YAML-like dicts, in process: its one conditioner (built at
construction from the top-level conditioning sections, fed with the dataset's records), and through it DehazeModel's
AMP, EMA, CR, checkpoints, validation (tests/test_model_types.py: what each model type defines)."""
import copy
import os
import subprocess
import sys
import types

import pytest
import torch
import torchvision
from basicsr.data import build_dataset
from basicsr.models import build_model
from torch.utils.data import DataLoader

from _clip_helpers import make_pairs, make_tiny_clip, tiny_clip_opt
from _net_helpers import conv_output_dtypes
from _train_helpers import ROOT, write_yaml
from mixcl_arch.clip.prior import CLIPPrior
from mixcl_arch.clip.store import FeatureStore
from mixcl_arch.conditioning.conditioner import CLIPConditioner, NoneConditioner, OracleConditioner
from mixcl_arch.data.clip_data_util import standin_text_feature
from mixcl_arch.utils.basicsr_fixes import load_training_state
from mixcl_arch.utils.checkpoint import load_checkpoint_file
from mixcl_arch.utils.net_call import AMP_DTYPES
from mixcl_arch.utils.options import OptionError, load_yaml_file

DIMS = dict(embed_dims=[8, 16, 16, 16, 8], depths=[1, 1, 1, 1, 1], data_range='unit')
DOMAINS = ('indoor', 'outdoor')


def model_opt(tmp_path, net_type='MixCLDehazeNet', is_train=True, **train_extra):
    """MixCLDehazeNet (one vector) conditioned by oracle labels: the crc32 stand-in text features, no CLIP needed."""
    net = dict(type=net_type, **DIMS)
    if net_type == 'MixCLDehazeNet':
        net['num_cond'] = 1
    train = dict(optim_g=dict(type='AdamW', lr=1e-3), total_iter=10, warmup_iter=-1,
                 scheduler=dict(type='CosineAnnealingRestartLR', periods=[10], restart_weights=[1], eta_min=1e-6),
                 pixel_opt=dict(type='L1Loss', loss_weight=1.0, reduction='mean'))
    train.update(train_extra)
    exp = str(tmp_path / 'exp')
    return dict(name='unit', model_type='MixCLDehazeModel', num_gpu=0, is_train=is_train, dist=False, rank=0,
                world_size=1, manual_seed=0, datasets={}, network_g=net, train=train,
                conditioning=dict(source='oracle'),
                path=dict(pretrain_network_g=None, strict_load_g=True, models=os.path.join(exp, 'models'),
                          training_states=os.path.join(exp, 'training_states'),
                          visualization=os.path.join(exp, 'vis')),
                val=dict(save_img=True, suffix=None, metrics=dict(psnr=dict(type='calculate_psnr_dehaze'),
                                                                  psnr8=dict(type='calculate_psnr', crop_border=0))))


def batch(b=2, size=24, seed=0, domains=None):
    """A collated batch as CLIPPairedImageDataset gives it: images plus the 'domain' record (oracle labels)."""
    g = torch.Generator().manual_seed(seed)
    gt = torch.rand(b, 3, size, size, generator=g)
    return dict(lq=gt * 0.6 + 0.3, gt=gt, lq_path=[f'img{i}.png' for i in range(b)],
                domain=list(domains or [DOMAINS[i % 2] for i in range(b)]))


def standins(domains):
    """(B, 1, 512): the oracle conditioning of ``domains`` without a store."""
    return torch.stack([standin_text_feature(d, 512) for d in domains])[:, None]


def params(net):
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def test_conditioned_step_uses_the_conditioner_and_updates_weights(tmp_path):
    model = build_model(model_opt(tmp_path))
    assert type(model).__name__ == 'MixCLDehazeModel' and isinstance(model.conditioner, OracleConditioner)
    assert type(model.optimizer_g).__name__ == 'AdamW'
    before = params(model.net_g)
    data = batch()
    model.feed_data(data)
    assert torch.equal(model.cond, standins(data['domain']))
    model.optimize_parameters(1)
    assert set(model.log_dict) == {'l_pix'} and model.log_dict['l_pix'] > 0
    after = params(model.net_g)
    assert any(not torch.equal(before[k], after[k]) for k in before if 'text_emb' in k)
    # the conditioning changes the output
    model.test()
    out1 = model.output.clone()
    model.feed_data(dict(data, domain=data['domain'][::-1]))
    assert torch.equal(model.cond, standins(data['domain'][::-1]))
    model.test()
    assert not torch.allclose(out1, model.output)


def test_old_conditioning_keys_fail_at_construction_naming_their_new_place(tmp_path):
    for section, key, new in (('clip', 'cond_fallback', 'conditioning.fallback'),
                              ('clip', 'feature_store', 'conditioning.store')):
        opt = model_opt(tmp_path)
        opt[section] = {key: 'none'}
        with pytest.raises(OptionError, match=rf'{section}\.{key}: this setting moved to {new}'):
            build_model(opt)
    opt = model_opt(tmp_path)
    opt['datasets'] = {'train': dict(type='CLIPPairedImageDataset', cond_mode='soft')}
    with pytest.raises(OptionError, match=r'datasets\.train\.cond_mode: this setting moved to conditioning\.mode'):
        build_model(opt)


def test_unconditioned_net_has_no_conditioner_and_builds_no_prior(tmp_path):
    opt = model_opt(tmp_path, net_type='MixDehazeNet')
    opt['conditioning'] = {}  # source clip, with weights that do not exist: an unconditioned net never needs them
    opt['clip'] = dict(pretrained=str(tmp_path / 'missing_clip.pt'))
    model = build_model(opt)
    assert model.conditioner is None
    model.feed_data(batch())
    assert model.cond is None
    model.optimize_parameters(1)
    model.test()
    assert model.output.shape == (2, 3, 24, 24)


def test_missing_clip_weights_with_fallback_none_give_zero_vectors(tmp_path):
    opt = model_opt(tmp_path, is_train=False)
    opt['clip'] = dict(model='ViT-B-32', pretrained=str(tmp_path / 'missing_clip.pt'))
    opt['conditioning'] = dict(source='clip', fallback='none')
    model = build_model(opt)
    assert isinstance(model.conditioner, NoneConditioner) and 'ZERO' in model.conditioner.notes[-1]
    model.feed_data(batch())
    assert model.cond.shape == (2, 1, 512) and model.cond.abs().sum() == 0
    # the conditioner is neither part of net_g nor of its checkpoint
    assert not any('clip' in k.lower() or 'visual' in k for k in model.net_g.state_dict())


@pytest.mark.parametrize('amp', ['bf16', 'fp16'])
def test_amp_steps_and_fp16_scaler_state_round_trip(tmp_path, amp):
    model = build_model(model_opt(tmp_path, amp=amp))
    before = params(model.net_g)
    for it in (1, 2):
        model.feed_data(batch(seed=it))
        with conv_output_dtypes() as dtypes:
            model.optimize_parameters(it)
        # autocast really active: every convolution of the training forward ran in the AMP dtype
        assert dtypes and set(dtypes) == {AMP_DTYPES[amp]}, set(dtypes)
        assert torch.isfinite(torch.tensor(model.log_dict['l_pix']))
    assert all(p.dtype == torch.float32 for p in model.net_g.parameters())  # master weights stay fp32
    assert any(not torch.equal(before[k], v) for k, v in params(model.net_g).items())
    assert (model.scaler is not None) == (amp == 'fp16')
    if amp == 'fp16':  # the scaler took part in the steps (its growth tracker counts them)
        assert model.scaler.state_dict() != torch.amp.GradScaler('cpu').state_dict()
    model.save_training_state(0, 2)
    state = load_training_state(str(tmp_path / 'exp' / 'training_states' / '2.state'))
    assert ('scaler' in state) == (amp == 'fp16')
    if amp == 'fp16':
        fresh = build_model(model_opt(tmp_path, amp=amp))
        fresh.resume_training(state)
        assert fresh.scaler.state_dict() == model.scaler.state_dict()
        assert fresh.optimizer_g.state_dict()['state'].keys() == model.optimizer_g.state_dict()['state'].keys()


def test_bad_amp_and_optimizer_rejected_at_construction(tmp_path):
    with pytest.raises(ValueError, match='train.amp'):
        build_model(model_opt(tmp_path, amp='fp8'))
    opt = model_opt(tmp_path)
    opt['train']['optim_g']['type'] = 'AdamQ'
    with pytest.raises(ValueError, match='AdamQ'):
        build_model(opt)


def test_ema_tracks_params_and_buffers_and_is_used_for_validation(tmp_path):
    model = build_model(model_opt(tmp_path, ema_decay=0.5))
    ema0 = params(model.net_g_ema)
    model.feed_data(batch())
    model.optimize_parameters(1)
    net, ema = model.net_g.state_dict(), model.net_g_ema.state_dict()
    for k, v in net.items():
        if 'running' in k or 'num_batches' in k:
            assert torch.equal(ema[k], v), k  # buffers follow net_g
        elif v.dtype.is_floating_point:
            assert torch.allclose(ema[k], 0.5 * ema0[k] + 0.5 * v, atol=1e-6), k
    model.feed_data(batch(seed=3))
    model.test()
    with torch.no_grad():
        model.net_g_ema.eval()
        expected = model.net_g_ema(model.lq, model.cond)
        model.net_g.eval()
        plain = model.net_g(model.lq, model.cond)
    assert torch.allclose(model.output, expected) and not torch.allclose(model.output, plain)


def test_cr_loss_in_model(tmp_path):
    path = tmp_path / 'resnet18.pth'
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    model = build_model(model_opt(tmp_path, cr_opt=dict(type='ContrastLossRes', loss_weight=0.1, depth=18,
                                                         resnet_path=str(path))))
    model.feed_data(batch(size=32))
    model.optimize_parameters(1)
    assert set(model.log_dict) == {'l_pix', 'l_cr'} and model.log_dict['l_cr'] > 0
    assert not any(p is q for p in model.cri_cr.parameters() for g in model.optimizer_g.param_groups
                   for q in g['params'])


def test_compile_skipped_on_cpu_by_default(tmp_path):
    model = build_model(model_opt(tmp_path, compile=True))
    assert model._train_net is model.net_g


def test_pretrained_official_and_basicsr_files_load_strictly(tmp_path):
    src = build_model(model_opt(tmp_path, is_train=False))
    sd = src.net_g.state_dict()
    official = tmp_path / 'official.pth'
    torch.save({'state_dict': {'module.' + k: v for k, v in sd.items()}, 'epoch': 3}, official)
    opt = model_opt(tmp_path, is_train=False)
    opt['path'].update(pretrain_network_g=str(official), param_key_g='params')
    loaded = build_model(opt)
    assert all(torch.equal(v, sd[k]) for k, v in loaded.net_g.state_dict().items())
    bad = tmp_path / 'bad.pth'
    torch.save({'params': {k: v for k, v in sd.items() if 'text_emb' not in k}}, bad)
    opt['path']['pretrain_network_g'] = str(bad)
    with pytest.raises(ValueError, match='missing keys'):
        build_model(opt)


def test_param_key_g_params_ema_loads_the_ema_and_a_missing_explicit_key_is_an_error(tmp_path):
    src = build_model(model_opt(tmp_path, is_train=False)).net_g.state_dict()
    ema = {k: v + 1 if v.dtype.is_floating_point else v for k, v in src.items()}  # distinguishable values
    both = tmp_path / 'both.pth'
    torch.save({'params': src, 'params_ema': ema}, both)
    opt = model_opt(tmp_path, is_train=False)
    for key, expected in (('params_ema', ema), ('params', src)):
        opt['path'].update(pretrain_network_g=str(both), param_key_g=key)
        loaded = build_model(opt).net_g.state_dict()
        assert all(torch.equal(v, expected[k]) for k, v in loaded.items()), key
    plain = tmp_path / 'params_only.pth'
    torch.save({'params': src}, plain)
    opt['path'].update(pretrain_network_g=str(plain), param_key_g='params_ema')
    with pytest.raises((KeyError, ValueError), match='params_ema'):  # named explicitly: no silent fallback
        build_model(opt)


def test_save_is_atomic_when_interrupted(tmp_path, monkeypatch):
    model = build_model(model_opt(tmp_path))
    model.save_network(model.net_g, 'net_g', 5)
    model.save_training_state(0, 5)
    good = params(model.net_g)
    model.feed_data(batch())
    model.optimize_parameters(1)

    def boom(*args, **kwargs):
        raise KeyboardInterrupt('killed while saving')

    monkeypatch.setattr(os, 'replace', boom)
    with pytest.raises(KeyboardInterrupt):
        model.save_network(model.net_g, 'net_g', 5)
    with pytest.raises(KeyboardInterrupt):
        model.save_training_state(0, 5)
    monkeypatch.undo()
    ckpt = load_checkpoint_file(str(tmp_path / 'exp' / 'models' / 'net_g_5.pth'))
    assert all(torch.equal(ckpt['params'][k], v) for k, v in good.items())
    assert load_training_state(str(tmp_path / 'exp' / 'training_states' / '5.state'))['iter'] == 5
    leftovers = [f for d in ('models', 'training_states') for f in os.listdir(tmp_path / 'exp' / d)]
    assert sorted(leftovers) == ['5.state', 'net_g_5.pth']


class _ListSet(torch.utils.data.Dataset):

    def __init__(self, items, name):
        self.items, self.opt = items, dict(name=name)

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def _loader(with_gt, name):
    items = []
    for i in range(2):
        b = batch(b=1, seed=i, domains=[DOMAINS[i]])
        item = {k: v[0] for k, v in b.items()}
        item['lq_path'] = f'im{i}.png'
        if not with_gt:
            item.pop('gt')
        items.append(item)
    return DataLoader(_ListSet(items, name), batch_size=1)


def test_validation_float_metrics_uint8_metrics_and_no_gt(tmp_path):
    model = build_model(model_opt(tmp_path, is_train=False))
    model.validation(_loader(True, 'paired'), 1, None, save_img=False)
    res = copy.deepcopy(model.metric_results)
    assert set(res) == {'psnr', 'psnr8'} and abs(res['psnr'] - res['psnr8']) < 0.2 and res['psnr'] != res['psnr8']
    model.validation(_loader(False, 'nogt'), 1, None, save_img=True)
    assert model.metric_results == res  # unchanged: nothing to compare against
    assert sorted(os.listdir(tmp_path / 'exp' / 'vis' / 'nogt')) == ['im0_unit.png', 'im1_unit.png']
    assert not hasattr(model, 'gt')


@pytest.fixture(scope='module')
def pairs(tmp_path_factory):
    """Four 40x48 pairs with a meta.csv (alternating domains), the tiny CLIP and a feature store of the hazy images."""
    root = tmp_path_factory.mktemp('model_pairs')
    clip = make_tiny_clip(root / 'tiny_clip.pt')
    make_pairs(str(root / 'val'), n=4)
    dataset = build_dataset(val_dataset_opt(root))
    images = torch.stack([dataset[i]['lq'] for i in range(len(dataset))])
    prior = CLIPPrior(**tiny_clip_opt(clip))
    out = prior(images)
    FeatureStore.from_prior(prior).add(dataset.keys, out).save(root / 'store.pt')
    return types.SimpleNamespace(root=root, clip=clip, keys=dataset.keys, out=out)


def val_dataset_opt(root, **extra):
    folder = os.path.join(str(root), 'val')
    opt = dict(name='pairs', type='CLIPPairedImageDataset', phase='val', dataroot_lq=os.path.join(folder, 'hazy'),
               dataroot_gt=os.path.join(folder, 'GT'), meta_file=os.path.join(folder, 'meta.csv'),
               io_backend=dict(type='disk'))
    opt.update(extra)
    return opt


def yaml_model(tmp_path, pairs, num_cond, conditioning, clip=None, **dataset_extra):
    """``build_model`` of a tiny option file with these sections, and the first batch (2 images) of its dataset."""
    opt = dict(name='yaml', model_type='MixCLDehazeModel', num_gpu=0, is_train=False, dist=False, rank=0,
               world_size=1, manual_seed=0, network_g=dict(type='MixCLDehazeNet', num_cond=num_cond, **DIMS),
               clip=clip or tiny_clip_opt(pairs.clip), conditioning=conditioning,
               datasets=dict(val=val_dataset_opt(pairs.root, **dataset_extra)),
               path=dict(pretrain_network_g=None, strict_load_g=True, visualization=str(tmp_path / 'vis')),
               val=dict(save_img=False, metrics={}))
    opt = load_yaml_file(write_yaml(opt, tmp_path / 'opt.yml'))
    model = build_model(opt)
    return model, next(iter(DataLoader(build_dataset(opt['datasets']['val']), batch_size=2)))


@pytest.mark.parametrize('source', ['store', 'clip', 'oracle'])
def test_model_conditioning_equals_its_source_on_dataset_batches(tmp_path, pairs, source):
    """The same images through the store rows (by 'key'), the online tiny CLIP, or the oracle stand-in (by
    'domain'): store and clip give the same (B, 2, E) stack of the hard text feature and the image embedding."""
    if source == 'oracle':
        model, data = yaml_model(tmp_path, pairs, 1, dict(source='oracle'))
        expected = standins(DOMAINS)
        assert data['domain'] == list(DOMAINS)
    else:
        store = dict(feature_store=str(pairs.root / 'store.pt')) if source == 'store' else {}
        model, data = yaml_model(tmp_path, pairs, 2, dict(source=source, extra=['image']), **store)
        expected = torch.stack([pairs.out['text_hard'][:2], pairs.out['image_emb'][:2]], dim=1)
        assert data['key'] == pairs.keys[:2] and ('feature_store' in data) == (source == 'store')
    assert model.conditioner.source == source
    model.feed_data(data)
    torch.testing.assert_close(model.cond, expected.float(), atol=1e-5, rtol=1e-4)
    model.test()
    assert model.output.shape == data['lq'].shape


def test_bad_conditioning_fails_at_model_construction(tmp_path, pairs):
    with pytest.raises(ValueError, match=r'takes 2 conditioning vector.*network_g\.num_cond.*conditioning\.extra'):
        yaml_model(tmp_path, pairs, 2, dict(source='oracle'))
    # a store made with other CLIP options (here: other domains) than the run's clip section
    with pytest.raises(ValueError, match='store.pt.*domains'):
        yaml_model(tmp_path, pairs, 1, dict(source='store'), clip=tiny_clip_opt(pairs.clip, domains=['day', 'night']),
                   feature_store=str(pairs.root / 'store.pt'))
    with pytest.raises(OptionError, match=r'datasets\.val\.feature_store: missing'):
        yaml_model(tmp_path, pairs, 1, dict(source='store'))
    with pytest.raises(OptionError, match=r'datasets\.val\.meta_file: missing'):  # no domain labels
        yaml_model(tmp_path, pairs, 1, dict(source='oracle'), meta_file=None)
    # oracle labels (indoor / outdoor in the pair CSV) without a text feature in the run's store
    other = tmp_path / 'day_night.pt'
    torch.save({'domain_text': {d: torch.nn.functional.normalize(torch.randn(512), dim=0) for d in ('day', 'night')}},
               other)
    with pytest.raises(ValueError, match=r"Domain\(s\) \['indoor', 'outdoor'\] have no text feature in .*day_night"):
        yaml_model(tmp_path, pairs, 1, dict(source='oracle', store=str(other)))
    with pytest.raises(RuntimeError, match='clip.pretrained') as err:
        yaml_model(tmp_path, pairs, 1, dict(source='clip', fallback=None),
                   clip=tiny_clip_opt(tmp_path / 'missing_clip.pt'))
    assert 'conditioning.fallback' in str(err.value)


def test_model_module_does_not_import_the_inference_code():
    code = ('import sys, mixcl_arch.models.mixcl_dehaze_model\n'
            'print(" ".join(m for m in sys.modules if m.startswith("mixcl_arch")))')
    proc = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True, check=True,
                          env=dict(os.environ, OMP_NUM_THREADS='1'))
    modules = proc.stdout.split()
    assert 'mixcl_arch.conditioning.conditioner' in modules  # what the model does use is there
    assert 'mixcl_arch.restorers' not in modules and 'mixcl_arch.dehaze' not in modules


def test_online_clip_conditioning_is_frozen_and_outside_optimizer_and_checkpoints(tmp_path, pairs):
    """Source clip: a real (tiny) CLIP loaded from a file when the model is built, kept out of the optimizer,
    net_g's state dict and the saved checkpoint."""
    opt = model_opt(tmp_path)
    opt['clip'] = tiny_clip_opt(pairs.clip)
    opt['conditioning'] = dict(source='clip')
    model = build_model(opt)
    conditioner = model.conditioner
    assert isinstance(conditioner, CLIPConditioner) and conditioner.prior is not None
    data = batch()
    model.feed_data(data)
    prior = CLIPPrior(**tiny_clip_opt(pairs.clip))
    torch.testing.assert_close(model.cond, prior(data['lq'])['text_hard'][:, None].float(), atol=1e-5, rtol=1e-4)
    model.feed_data(batch(seed=1))
    assert model.conditioner is conditioner, 'the CLIP prior is built once'

    clip_params = {id(p) for p in conditioner.prior.model.parameters()}
    assert clip_params and all(not p.requires_grad for p in conditioner.prior.model.parameters())
    opt_params = {id(p) for g in model.optimizer_g.param_groups for p in g['params']}
    assert not clip_params & opt_params
    assert not any(id(m) == id(conditioner.prior.model) for m in model.net_g.modules())
    model.optimize_parameters(1)
    model.save(epoch=0, current_iter=1)
    saved = torch.load(os.path.join(opt['path']['models'], 'net_g_1.pth'))['params']
    assert set(saved) == set(model.net_g.state_dict())
    assert not any('visual' in k or 'token_embedding' in k for k in saved)
