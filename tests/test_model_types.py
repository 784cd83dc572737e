"""The three model types: DehazeModel (nets on the hazy image only), MixCLDehazeModel (DehazeModel + conditioning)
and DehazeNetModel (transmission regression on DehazeModel): what each defines, trains and refuses."""
import inspect
import os

import pytest
import torch
from basicsr.models import build_model

from _train_helpers import TRAIN, make_pair_dataset, run_entry, tiny_train_opt, validation_values, write_yaml
from mixcl_arch.models import dehaze_model
from mixcl_arch.models.dehaze_model import DehazeModel
from mixcl_arch.models.dehazenet_model import DehazeNetModel
from mixcl_arch.models.mixcl_dehaze_model import MixCLDehazeModel
from mixcl_arch.utils.checkpoint import load_checkpoint_file
from mixcl_arch.utils.options import OptionError, load_yaml_file

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))
MIXDEHAZE = dict(type='MixDehazeNet', embed_dims=[8, 16, 16, 16, 8], depths=[1, 1, 1, 1, 1], data_range='unit')
AODNET = dict(type='AODNet', data_range='unit')
CLIPHAZE = dict(type='CLIPHazeNet', width=4, depths=[1, 1, 1], bottleneck_depth=1, d_state=4, film_hidden=8,
                data_range='unit')
SUGGESTION = 'takes no conditioning: model_type: DehazeModel trains it the same way'
COND_NAMES = ('cond', 'cond_cfg', 'conditioner', '_check_datasets')


def _opt(tmp_path, net, model_type='DehazeModel', **val_extra):
    """In-process training options (no datasets: batches are fed by hand; zero conditioning: no CLIP needed)."""
    exp = tmp_path / 'exp'
    return dict(name='unit', model_type=model_type, num_gpu=0, is_train=True, dist=False, rank=0, world_size=1,
                manual_seed=0, datasets={}, network_g=dict(net), conditioning=dict(source='none'),
                train=dict(optim_g=dict(type='Adam', lr=1e-3), total_iter=2, warmup_iter=-1,
                           scheduler=dict(type='MultiStepLR', milestones=[10], gamma=0.5),
                           pixel_opt=dict(type='L1Loss', loss_weight=1.0)),
                path=dict(pretrain_network_g=None, strict_load_g=True, models=str(exp / 'models'),
                          training_states=str(exp / 'states'), visualization=str(exp / 'vis')),
                val=dict(save_img=False, metrics={}, **val_extra))


def _batch(size=32, extra=True):
    g = torch.Generator().manual_seed(0)
    gt = torch.rand(2, 3, size, size, generator=g)
    data = dict(lq=gt * 0.6 + 0.3, gt=gt)
    if extra:  # the records CLIPPairedImageDataset adds for a conditioner: a DehazeModel must not pass any on
        data.update(key=['a', 'b'], domain=['indoor', 'outdoor'], feature_store=['store.pt'] * 2,
                    crop=torch.tensor([[0, 0, size, size, 0, 0, 0]] * 2))
    return data


def _record_calls(net):
    calls = []
    net.register_forward_pre_hook(lambda m, args, kwargs: calls.append((len(args), sorted(kwargs))), with_kwargs=True)
    return calls


# ------------------------------------------------------------------------------------------------ what each defines
def test_dehaze_model_has_no_conditioning(tmp_path):
    assert not [name for name in COND_NAMES if hasattr(DehazeModel, name)]
    src = inspect.getsource(dehaze_model)
    assert 'mixcl_arch.clip' not in src and 'restorers' not in src and 'conditioning import' not in src
    model = build_model(_opt(tmp_path, MIXDEHAZE))
    assert type(model) is DehazeModel
    calls = _record_calls(model.net_g)
    model.feed_data(_batch())
    model.optimize_parameters(1)
    model.test()
    assert calls == [(1, []), (1, [])]  # training and test forward: net(lq), nothing else
    assert not [name for name in COND_NAMES if hasattr(model, name)]
    assert model.output.shape == (2, 3, 32, 32)


def test_mixcl_model_is_a_dehaze_model_that_defines_only_conditioning():
    assert issubclass(MixCLDehazeModel, DehazeModel)
    own = {name for name, value in vars(MixCLDehazeModel).items()
           if inspect.isfunction(value) or isinstance(value, property)}
    assert own == {'__init__', '_check_net_inputs', '_check_datasets', 'feed_data', '_run'}
    # everything else (training step, validation, checkpoints, EMA, AMP) is DehazeModel's, not a copy
    for name in ('optimize_parameters', 'test', 'nondist_validation', 'save_network', 'load_network', 'model_ema'):
        assert getattr(MixCLDehazeModel, name) is getattr(DehazeModel, name), name


def test_dehazenet_model_has_no_clip_code_to_switch_off():
    assert issubclass(DehazeNetModel, DehazeModel) and not issubclass(DehazeNetModel, MixCLDehazeModel)
    assert not [name for name in COND_NAMES if hasattr(DehazeNetModel, name)]
    assert 'cond' not in inspect.getsource(DehazeNetModel)


# ---------------------------------------------------------------------------------------- which nets each accepts
@pytest.mark.parametrize('net', [dict(MIXDEHAZE, type='MixCLDehazeNet', num_cond=1), CLIPHAZE],
                         ids=['MixCLDehazeNet', 'CLIPHazeNet'])
def test_dehaze_model_refuses_conditioned_nets_naming_the_model_to_use(tmp_path, net):
    with pytest.raises(OptionError, match=rf"network_g type {net['type']} takes conditioning .*"
                                          'use model_type: MixCLDehazeModel'):
        build_model(_opt(tmp_path, net))
    assert type(build_model(_opt(tmp_path, net, 'MixCLDehazeModel'))) is MixCLDehazeModel


def test_cliphazenet_without_cam_trains_under_dehaze_model_as_under_mixcl_model(tmp_path):
    net = dict(CLIPHAZE, cam='none')
    plain = build_model(_opt(tmp_path / 'a', net))
    old = build_model(_opt(tmp_path / 'b', net, 'MixCLDehazeModel'))
    old.net_g.load_state_dict(plain.net_g.state_dict())
    calls = _record_calls(plain.net_g)
    for model in (plain, old):
        model.feed_data(_batch())
        model.optimize_parameters(1)
        model.test()
    assert calls == [(1, []), (1, [])]
    torch.testing.assert_close(plain.output, old.output, atol=0, rtol=0)
    for kind in ('train', 'test'):  # the shipped cam-none recipes say so
        path = os.path.join(ROOT, 'options', kind, f'{kind}_CLIPHazeNet_T_demo_cam_none.yml')
        assert load_yaml_file(path)['model_type'] == 'DehazeModel'


def test_dehaze_model_tiled_test_matches_the_whole_image(tmp_path):
    whole = build_model(_opt(tmp_path / 'a', MIXDEHAZE))
    tiled = build_model(_opt(tmp_path / 'b', MIXDEHAZE, tile=dict(tile_size=32, tile_pad=8)))
    tiled.net_g.load_state_dict(whole.net_g.state_dict())
    calls = _record_calls(tiled.net_g)
    for model in (whole, tiled):
        model.feed_data(_batch(size=80, extra=False))
        model.test()
    assert len(calls) > 1 and all(c == (1, []) for c in calls)
    err = (tiled.output - whole.output).abs()
    assert err.mean() < 5e-3 and err.max() < 0.1, (err.mean(), err.max())


# ---------------------------------------------------------------------------------------------- train.py end to end
@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    """train.py on tiny generated pairs: AODNet and MixDehazeNet under DehazeModel, and MixDehazeNet under the old
    ``model_type: MixCLDehazeModel`` (a user's YAML from before DehazeModel existed)."""
    work = tmp_path_factory.mktemp('model_types')
    make_pair_dataset(str(work / 'datasets' / 'tiny'), n_train=4, n_test=1)
    logs = {}
    for name, net, model_type in (('aod', AODNET, 'DehazeModel'), ('mix', MIXDEHAZE, 'DehazeModel'),
                                  ('mix_old', MIXDEHAZE, 'MixCLDehazeModel')):
        opt = tiny_train_opt(os.path.join('datasets', 'tiny'), name=name, net=net)
        opt['model_type'] = model_type
        logs[name] = run_entry(TRAIN, ['-opt', write_yaml(opt, work / f'{name}.yml')], cwd=str(work))
    return work, logs


def _weights(work, name, it):
    return load_checkpoint_file(str(work / 'experiments' / name / 'models' / f'net_g_{it}.pth'))


@pytest.mark.parametrize('name, arch', [('aod', 'AODNet'), ('mix', 'MixDehazeNet')])
def test_dehaze_model_trains_from_a_yaml(runs, name, arch):
    work, logs = runs
    log = logs[name]
    assert 'Model [DehazeModel] is created.' in log and SUGGESTION not in log
    psnr = validation_values(log, 'psnr')
    assert len(psnr) == 3 and all(5 < v < 60 for v in psnr)  # iters 2, 4 and the final validation
    first, last = _weights(work, name, 2), _weights(work, name, 4)
    assert last['meta']['arch'] == arch
    assert any(not torch.equal(first['params'][k], v) for k, v in last['params'].items())  # it learns


def test_old_unconditioned_yaml_with_mixcl_model_trains_the_same_and_suggests_dehaze_model(runs):
    work, logs = runs
    log = logs['mix_old']
    assert 'Model [MixCLDehazeModel] is created.' in log and log.count(SUGGESTION) == 1
    assert validation_values(log, 'psnr') == validation_values(logs['mix'], 'psnr')
    old, new = _weights(work, 'mix_old', 'latest')['params'], _weights(work, 'mix', 'latest')['params']
    assert old.keys() == new.keys() and all(torch.equal(old[k], new[k]) for k in old)
