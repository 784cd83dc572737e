"""MixCLDehazeModel built from YAML-like dicts, in process: conditioning, AMP, EMA, CR, checkpoints, validation."""
import copy
import os

import pytest
import torch
import torchvision
from basicsr.models import build_model
from torch.utils.data import DataLoader

from _net_helpers import conv_output_dtypes
from mixcl_arch.models.mixcl_dehaze_model import AMP_DTYPES
from mixcl_arch.utils.basicsr_fixes import load_training_state
from mixcl_arch.utils.checkpoint import load_checkpoint_file

DIMS = dict(embed_dims=[8, 16, 16, 16, 8], depths=[1, 1, 1, 1, 1], data_range='unit')


def model_opt(tmp_path, net_type='MixCLDehazeNet', is_train=True, **train_extra):
    net = dict(type=net_type, **DIMS)
    if net_type == 'MixCLDehazeNet':
        net['num_cond'] = 2
    train = dict(optim_g=dict(type='AdamW', lr=1e-3), total_iter=10, warmup_iter=-1,
                 scheduler=dict(type='CosineAnnealingRestartLR', periods=[10], restart_weights=[1], eta_min=1e-6),
                 pixel_opt=dict(type='L1Loss', loss_weight=1.0, reduction='mean'))
    train.update(train_extra)
    exp = str(tmp_path / 'exp')
    return dict(name='unit', model_type='MixCLDehazeModel', num_gpu=0, is_train=is_train, dist=False, rank=0,
                world_size=1, manual_seed=0, datasets={}, network_g=net, train=train,
                path=dict(pretrain_network_g=None, strict_load_g=True, models=os.path.join(exp, 'models'),
                          training_states=os.path.join(exp, 'training_states'),
                          visualization=os.path.join(exp, 'vis')),
                val=dict(save_img=True, suffix=None, metrics=dict(psnr=dict(type='calculate_psnr_dehaze'),
                                                                  psnr8=dict(type='calculate_psnr', crop_border=0))))


def batch(b=2, size=24, k=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    gt = torch.rand(b, 3, size, size, generator=g)
    out = dict(lq=gt * 0.6 + 0.3, gt=gt, lq_path=[f'img{i}.png' for i in range(b)])
    if k:
        out['cond'] = torch.randn(b, k, 512, generator=g)
    return out


def params(net):
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def test_conditioned_step_uses_cond_and_updates_weights(tmp_path):
    model = build_model(model_opt(tmp_path))
    assert type(model).__name__ == 'MixCLDehazeModel' and model.num_cond == 2
    assert type(model.optimizer_g).__name__ == 'AdamW'
    before = params(model.net_g)
    data = batch()
    model.feed_data(data)
    assert torch.equal(model.cond, data['cond'])
    model.optimize_parameters(1)
    assert set(model.log_dict) == {'l_pix'} and model.log_dict['l_pix'] > 0
    after = params(model.net_g)
    assert any(not torch.equal(before[k], after[k]) for k in before if 'text_emb' in k)
    # the conditioning changes the output
    model.test()
    out1 = model.output.clone()
    model.feed_data(dict(data, cond=data['cond'] * -1))
    model.test()
    assert not torch.allclose(out1, model.output)


def test_text_key_and_bad_conditioning(tmp_path):
    opt = model_opt(tmp_path)
    opt['network_g']['num_cond'] = 1
    model = build_model(opt)
    data = batch(k=0)
    data['text'] = torch.randn(2, 512)
    model.feed_data(data)
    assert model.cond.shape == (2, 1, 512)
    with pytest.raises(ValueError, match='K=1'):
        model.feed_data(dict(batch(k=3)))


def test_unconditioned_net_ignores_cond(tmp_path):
    model = build_model(model_opt(tmp_path, net_type='MixDehazeNet'))
    assert model.num_cond == 0
    model.feed_data(batch(k=2))
    assert model.cond is None
    model.optimize_parameters(1)
    model.test()
    assert model.output.shape == (2, 3, 24, 24)


def test_online_conditioning_fallback_none_and_missing_clip_error(tmp_path):
    opt = model_opt(tmp_path, is_train=False)
    opt['clip'] = dict(model='ViT-B-32', pretrained=str(tmp_path / 'missing_clip.pt'), cond_fallback='none')
    model = build_model(opt)
    model.feed_data(batch(k=0))
    assert model.cond.shape == (2, 2, 512) and model.cond.abs().sum() == 0
    provider = model._cond_provider
    model.feed_data(batch(k=0, seed=1))
    assert model._cond_provider is provider  # built once
    # the prior is neither part of net_g nor of its checkpoint
    assert not any('clip' in k.lower() or 'visual' in k for k in model.net_g.state_dict())
    opt['clip'].pop('cond_fallback')
    strict = build_model(opt)
    with pytest.raises(RuntimeError, match='clip.cond_fallback'):
        strict.feed_data(batch(k=0))
    opt['clip']['cond_fallback'] = {'domian': 'outdoor'}
    with pytest.raises(ValueError, match='cond_fallback'):
        build_model(opt)


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
        b = batch(b=1, k=2, seed=i)
        item = {k: (v[0] if torch.is_tensor(v) else v[0]) for k, v in b.items()}
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


def test_online_clip_conditioning_is_frozen_and_outside_optimizer_and_checkpoints(tmp_path):
    """A batch without conditioning gets it from a real (tiny) CLIP loaded from a file, built once and kept out of
    the optimizer, net_g's state dict and the saved checkpoint."""
    from _clip_helpers import make_tiny_clip, tiny_clip_opt
    from mixcl_arch.clip import CLIPPrior, build_condition
    clip_file = make_tiny_clip(tmp_path / 'tiny_clip.pt')
    opt = model_opt(tmp_path)
    opt['network_g']['num_cond'] = 1
    opt['clip'] = tiny_clip_opt(clip_file)
    model = build_model(opt)
    data = batch(k=0)
    model.feed_data(data)
    provider = model._cond_provider
    assert provider is not None and provider.source == 'clip'
    expected = build_condition(CLIPPrior.from_opt(tiny_clip_opt(clip_file))(data['lq']), mode='hard')
    torch.testing.assert_close(model.cond, expected.float(), atol=1e-5, rtol=1e-4)
    model.feed_data(batch(k=0, seed=1))
    assert model._cond_provider is provider, 'the CLIP prior is built once'

    clip_params = {id(p) for p in provider.prior.model.parameters()}
    assert clip_params and all(not p.requires_grad for p in provider.prior.model.parameters())
    opt_params = {id(p) for g in model.optimizer_g.param_groups for p in g['params']}
    assert not clip_params & opt_params
    assert not any(id(m) == id(provider.prior.model) for m in model.net_g.modules())
    model.optimize_parameters(1)
    model.save(epoch=0, current_iter=1)
    saved = torch.load(os.path.join(opt['path']['models'], 'net_g_1.pth'))['params']
    assert set(saved) == set(model.net_g.state_dict())
    assert not any('visual' in k or 'token_embedding' in k for k in saved)
