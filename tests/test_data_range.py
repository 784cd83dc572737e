"""Issue 15.2: no silent data-range trap. The model feeds every net in the range it declares, checkpoints record the
arch, range and network_g, the CLI rebuilds the net from that record, and a conflicting --opt is reported."""
import os
import warnings

import cv2
import numpy as np
import pytest
import torch
from basicsr.models import build_model

from _net_helpers import randomize_bn
from mixcl_arch.dehaze import main as dehaze_main
from mixcl_arch.restorers import DataRangeMismatchWarning, build_net_from_checkpoint, build_restorer
from mixcl_arch.utils.checkpoint import load_checkpoint_file, load_network_weights, read_checkpoint_meta, \
    save_weights_file
from test_model import batch, model_opt, standins

pytestmark = pytest.mark.usefixtures('one_thread')


def _model(tmp_path, net_type='MixCLDehazeNet', data_range='unit', is_train=True, **net_extra):
    """A tiny model; ``data_range=None`` leaves the key out of network_g (the arch default applies)."""
    opt = model_opt(tmp_path, net_type, is_train=is_train)
    opt['network_g'].update(net_extra)
    if net_type == 'AODNet':
        opt['network_g'] = dict(type='AODNet')
    if data_range is None:
        opt['network_g'].pop('data_range', None)
    else:
        opt['network_g']['data_range'] = data_range
    torch.manual_seed(0)  # the nets' initial weights do not depend on the tests run before
    model = build_model(opt)
    randomize_bn(model.net_g)
    return model


def _copy_weights(dst, src):
    dst.net_g.load_state_dict(src.net_g.state_dict())
    if hasattr(dst, 'net_g_ema'):
        dst.net_g_ema.load_state_dict(src.net_g.state_dict())


def _output(model, data):
    model.feed_data(data)
    model.test()
    return model.output.clone()


@pytest.mark.parametrize('net_type', ['MixDehazeNet', 'MixCLDehazeNet'])
def test_omitted_data_range_is_right_not_silently_wrong(tmp_path, net_type):
    """The trap: a network_g without data_range builds a 'signed' net, and [0, 1] batches went in unconverted."""
    default = _model(tmp_path / 'a', net_type, data_range=None)
    unit = _model(tmp_path / 'b', net_type, data_range='unit')
    assert default.net_g.data_range == 'signed'
    _copy_weights(unit, default)
    data = batch()  # MixCLDehazeNet: the model conditions it by the oracle labels, standins(domain)
    right = _output(unit, data)
    # what the model returned before: the signed net applied to [0, 1] data as if it were [-1, 1]
    with torch.no_grad():
        default.net_g.eval()
        conditioned = net_type == 'MixCLDehazeNet'
        raw = default.net_g(data['lq'], standins(data['domain'])) if conditioned else default.net_g(data['lq'])
    assert (raw - right).abs().mean() > 0.05  # measured 0.10 (MixDehazeNet), 0.17 (MixCLDehazeNet)
    torch.testing.assert_close(_output(default, data), right, atol=1e-5, rtol=0)
    # training sees the same loss (the pipeline's [0, 1] GT against a [0, 1] output)
    for model in (default, unit):
        model.net_g.train()
        model.feed_data(data)
        model.optimize_parameters(1)
    assert abs(default.log_dict['l_pix'] - unit.log_dict['l_pix']) < 1e-5


@pytest.mark.parametrize('fmt', ['pth', 'safetensors'])
@pytest.mark.parametrize('data_range', ['unit', None])
def test_checkpoint_records_arch_range_and_network_g(tmp_path, fmt, data_range):
    model = _model(tmp_path, 'MixCLDehazeNet', data_range=data_range)
    model.opt['path']['save_format'] = fmt
    model.save_network([model.net_g, model.net_g], 'net_g', 7, param_key=['params', 'params_ema'])
    path = os.path.join(model.opt['path']['models'], f'net_g_7.{fmt}')
    ckpt = load_checkpoint_file(path)
    assert set(ckpt) == {'params', 'params_ema', 'meta'}
    meta = read_checkpoint_meta(ckpt, path)
    in_use = data_range or 'signed'  # the arch default is recorded as the value in use
    assert meta['arch'] == 'MixCLDehazeNet' and meta['data_range'] == in_use
    assert meta['network_g'] == dict(model.opt['network_g'], data_range=in_use)
    # loading ignores the record: strict, into a net of either range (the weights are the same)
    net, _ = build_net_from_checkpoint(path, param_key='params')
    assert all(torch.equal(v, model.net_g.state_dict()[k]) for k, v in net.state_dict().items())


def test_cli_without_opt_uses_the_recorded_network(tmp_path):
    """A checkpoint saved by training (data_range unit, any arch: AODNet cannot be inferred from its keys) is rebuilt
    by the CLI without --opt, and dehazes like the model's own test()."""
    model = _model(tmp_path, 'AODNet', data_range='unit')
    model.save_network(model.net_g, 'net_g', 3)
    weights = os.path.join(model.opt['path']['models'], 'net_g_3.pth')
    net, net_opt = build_net_from_checkpoint(weights)
    assert type(net).__name__ == 'AODNet' and net.data_range == 'unit' and net_opt['data_range'] == 'unit'

    rgb = (np.random.default_rng(0).random((20, 28, 3)) * 255).astype(np.uint8)
    os.makedirs(tmp_path / 'in')
    cv2.imwrite(str(tmp_path / 'in' / 'a.png'), rgb[..., ::-1])
    assert dehaze_main(['-i', str(tmp_path / 'in'), '-o', str(tmp_path / 'out'), '--weights', weights]) == 0
    written = cv2.imread(str(tmp_path / 'out' / 'a.png'))[..., ::-1].astype(np.int16)
    lq = torch.from_numpy(rgb.astype(np.float32) / 255).permute(2, 0, 1)[None]
    expected = _output(model, dict(lq=lq))[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255
    assert np.abs(written - expected).max() <= 1


def test_cli_uses_a_recorded_signed_range_and_gets_the_same_output(tmp_path):
    model = _model(tmp_path, 'MixDehazeNet', data_range=None)
    model.save_network(model.net_g, 'net_g', 1)
    weights = os.path.join(model.opt['path']['models'], 'net_g_1.pth')
    restorer = build_restorer('net', weights)
    assert restorer.net.data_range == 'signed'
    x = batch()['lq']
    torch.testing.assert_close(restorer(x), _output(model, dict(lq=x)).clamp(0, 1), atol=1e-5, rtol=0)


def test_conflicting_opt_warns_on_range_and_fails_on_arch(tmp_path):
    model = _model(tmp_path, 'MixDehazeNet', data_range='unit')
    model.save_network(model.net_g, 'net_g', 1)
    weights = os.path.join(model.opt['path']['models'], 'net_g_1.pth')
    signed = dict(model.opt['network_g'], data_range='signed')
    with pytest.warns(DataRangeMismatchWarning, match=r"records data_range 'unit'.*'signed'"):
        restorer = build_restorer('net', weights, opt={'network_g': signed})
    x = batch()['lq']
    torch.testing.assert_close(restorer(x), _output(model, dict(lq=x)).clamp(0, 1), atol=1e-5, rtol=0)
    with pytest.warns(DataRangeMismatchWarning, match='left to the arch default'):
        build_net_from_checkpoint(weights, {'network_g': {k: v for k, v in signed.items() if k != 'data_range'}})
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        build_net_from_checkpoint(weights, {'network_g': model.opt['network_g']})  # agreeing --opt: silent
    with pytest.raises(ValueError, match=r"holds a MixDehazeNet.*'MixCLDehazeNet'"):
        build_net_from_checkpoint(weights, {'network_g': dict(signed, type='MixCLDehazeNet')})


def test_official_files_without_record_still_load_strictly(tmp_path):
    model = _model(tmp_path, 'MixDehazeNet', data_range=None)
    state = {'module.' + k: v for k, v in model.net_g.state_dict().items()}
    official = str(tmp_path / 'official.pth')
    torch.save({'state_dict': state, 'epoch': 3, 'best_psnr': 30.0}, official)
    net, net_opt = build_net_from_checkpoint(official)
    assert net_opt['data_range'] == 'unit' and type(net).__name__ == 'MixDehazeNet'
    x = batch()['lq']
    torch.testing.assert_close(net(x), _output(model, dict(lq=x)), atol=1e-5, rtol=0)
    # and the model's pretrain_network_g loads a file with a record strictly (the record is not weights)
    model.save_network(model.net_g, 'net_g', 2)
    opt = model_opt(tmp_path / 'c', 'MixDehazeNet', is_train=False)
    opt['path']['pretrain_network_g'] = os.path.join(model.opt['path']['models'], 'net_g_2.pth')
    loaded = build_model(opt)
    assert all(torch.equal(v, model.net_g.state_dict()[k]) for k, v in loaded.net_g.state_dict().items())


@pytest.mark.parametrize('meta,match', [({'arch': 'AODNet', 'data_range': '255'}, 'meta.data_range'),
                                        ('unit', 'must be a mapping'),
                                        ({'arch': 'AODNet', 'network_g': {'type': 'MixDehazeNet'}}, 'meta.network_g')])
def test_bad_record_is_reported_with_the_file(tmp_path, meta, match):
    path = str(tmp_path / 'bad.pth')
    torch.save({'params': {}, 'meta': meta}, path)
    with pytest.raises(ValueError, match=match) as err:
        build_net_from_checkpoint(path)
    assert 'bad.pth' in str(err.value)


def test_meta_is_not_a_weights_key(tmp_path):
    path = str(tmp_path / 'w.pth')
    net = _model(tmp_path, 'AODNet').net_g
    save_weights_file({'params': net.state_dict()}, path, meta={'arch': 'AODNet', 'data_range': 'unit'})
    with pytest.raises(ValueError, match="'meta' holds the checkpoint metadata"):
        load_network_weights(net, path, param_key='meta')
    with pytest.raises(ValueError, match='reserved'):
        save_weights_file({'meta': net.state_dict()}, path)
