"""Issue 15.4: ``val.tile`` (HAT's ``tile_size`` / ``tile_pad``) tiles the model's test(), so validation in train.py and
test.py, with the CLI's seamless blending; conditioning reaches every tile; the options are checked."""
import pytest
import torch
from basicsr.models import build_model

from _net_helpers import randomize_bn
from mixcl_arch.restorers import NetRestorer
from mixcl_arch.utils.options import OptionError, check_options
from mixcl_arch.utils.tiling import hat_tile_args, tile_starts
from test_model import _loader, model_opt
from test_tiling import _seam_excess, _smooth_image

pytestmark = pytest.mark.usefixtures('one_thread')


def _model(tmp_path, net_type, tile=None, where='val', cond_store=None, **net_extra):
    opt = model_opt(tmp_path, net_type, is_train=False)
    if cond_store is not None:  # the oracle's per-domain text vectors (default: the unit-norm stand-ins)
        opt['conditioning']['store'] = str(cond_store)
    opt['path']['log'] = str(tmp_path)  # test runs write a per-image CSV there
    opt['network_g'].update(net_extra)
    if net_type == 'AODNet':
        opt['network_g'] = dict(type='AODNet')
    if tile is not None:
        (opt['val'] if where == 'val' else opt)['tile'] = dict(tile_size=tile[0], tile_pad=tile[1])
    torch.manual_seed(0)  # the nets' initial weights do not depend on the tests run before
    model = build_model(opt)
    randomize_bn(model.net_g)
    return model


def _count_calls(net):
    calls = []
    net.register_forward_pre_hook(lambda module, args: calls.append(args))
    return calls


def _test(model, lq, domains=None):
    model.feed_data(dict(lq=lq) if domains is None else dict(lq=lq, domain=domains))  # oracle labels: model_opt
    model.test()
    return model.output.clone()


@pytest.mark.parametrize('where', ['val', 'top'])
def test_local_net_tiled_equals_whole_image(tmp_path, where):
    """AODNet reaches 7 px; tile_pad 16 leaves a zero-weight margin of 2 * 16 // 4 = 8 px, so tiling is exact."""
    whole = _model(tmp_path / 'a', 'AODNet')
    tiled = _model(tmp_path / 'b', 'AODNet', tile=(40, 16), where=where)
    tiled.net_g.load_state_dict(whole.net_g.state_dict())
    calls = _count_calls(tiled.net_g)
    x = torch.rand(1, 3, 100, 130)
    out = _test(tiled, x)
    tile, overlap = hat_tile_args(40, 16)
    assert len(calls) == len(tile_starts(100, tile, overlap)) * len(tile_starts(130, tile, overlap)) > 1
    assert all(max(args[0].shape[-2:]) <= 40 + 2 * 16 for args in calls)
    assert (out - _test(whole, x)).abs().max().item() < 1e-5


def test_mixdehazenet_tiles_blend_without_seams_like_the_cli(tmp_path):
    """The CLI's seamlessness test (tests/test_tiling.py) on the model's test(); same tiles, same output as the CLI."""
    whole = _model(tmp_path / 'a', 'MixDehazeNet')
    tiled = _model(tmp_path / 'b', 'MixDehazeNet', tile=(48, 24))  # net input 96, overlap 48: the CLI test's tiling
    tiled.net_g.load_state_dict(whole.net_g.state_dict())
    x = _smooth_image(150, 170)
    full, out = _test(whole, x), _test(tiled, x)
    assert (out - full).abs().mean().item() < 2e-3
    assert (out - full).abs().max().item() < 0.05
    starts = tile_starts(172, 96, 48, 4)  # width padded to the net's grid of 4
    borders = sorted({c for s in starts for c in range(s - 3, s + 4)}
                     | {c for s in starts for c in range(s + 92, s + 99)})
    assert _seam_excess(out, full, borders) < 0.01
    cli = NetRestorer(tiled.net_g, tile=96, tile_overlap=48)
    torch.testing.assert_close(cli(x), out.clamp(0, 1), atol=1e-6, rtol=0)
    # the tiles really differ from the whole image (global pooling), so the blend is what hides them
    assert (out - full).abs().max().item() > 1e-4


def test_conditioning_reaches_every_tile(tmp_path):
    # random per-domain text vectors (norm ~22): a fresh text fusion barely reacts to unit-norm ones
    domains = ['indoor', 'outdoor']
    g = torch.Generator().manual_seed(0)
    text = {d: torch.randn(512, generator=g) for d in domains}
    torch.save({'domain_text': text}, tmp_path / 'text.pt')
    tiled = _model(tmp_path / 'a', 'MixCLDehazeNet', tile=(48, 24), cond_store=tmp_path / 'text.pt')
    whole = _model(tmp_path / 'b', 'MixCLDehazeNet', cond_store=tmp_path / 'text.pt')
    tiled.net_g.load_state_dict(whole.net_g.state_dict())
    calls = _count_calls(tiled.net_g)
    x = _smooth_image(120, 150).expand(2, -1, -1, -1).contiguous()
    out = _test(tiled, x, domains)
    assert len(calls) == len(tile_starts(120, 96, 48, 4)) * len(tile_starts(152, 96, 48, 4)) > 1
    assert all(torch.equal(args[1], torch.stack([text[d] for d in domains])[:, None]) for args in calls)
    assert (out - _test(whole, x, domains)).abs().mean().item() < 2e-3
    other = _test(whole, x, domains[::-1])
    assert (out - other).abs().mean().item() > 10 * (out - _test(whole, x, domains)).abs().mean().item()


def test_validation_runs_tiled(tmp_path):
    """nondist_validation (train.py's validation and test.py) goes through the tiled test()."""
    tiled = _model(tmp_path, 'MixCLDehazeNet', tile=(8, 4))
    calls = _count_calls(tiled.net_g)
    tiled.validation(_loader(True, 'paired'), 1, None, save_img=False)
    tile, overlap = hat_tile_args(8, 4)
    per_image = len(tile_starts(24, tile, overlap, 4)) ** 2
    assert per_image > 1 and len(calls) == 2 * per_image
    assert set(tiled.metric_results) == {'psnr', 'psnr8'}


def _run_opt(**tiles):
    return dict(name='t', model_type='MixCLDehazeModel', is_train=False, num_gpu=0,
                datasets={'test_1': dict(name='x', type='CLIPPairedImageDataset')}, val={}, **tiles)


@pytest.mark.parametrize('tile,expected', [
    ({'tile_size': 0, 'tile_pad': 8}, 'val.tile.tile_size: expected an integer > 0, got 0'),
    ({'tile_size': 64, 'tile_pad': '8'}, "val.tile.tile_pad: expected an integer > 0, got '8' (str)"),
    ({'tile_size': 64, 'tile_pad': 64}, 'val.tile.tile_pad: expected an integer < tile_size (64), got 64'),
    ({'tile_pad': 8}, 'val.tile.tile_size: missing (required)'),
    ([64, 8], 'val.tile: expected a mapping'),
])
def test_bad_tile_options_are_named(tile, expected):
    opt = _run_opt()
    opt['val']['tile'] = tile
    with pytest.raises(OptionError, match='^' + expected.replace('(', r'\(').replace(')', r'\)')):
        check_options(opt)


def test_good_tile_options_and_both_places_at_once(tmp_path):
    assert check_options(dict(_run_opt(), val={'tile': {'tile_size': 64.0, 'tile_pad': 8}})).val.tile.tile_size == 64
    assert check_options(_run_opt(tile={'tile_size': 64, 'tile_pad': 8})).tile.tile_pad == 8
    assert check_options(dict(_run_opt(), val={'tile': None})).val.tile is None
    opt = model_opt(tmp_path, 'MixDehazeNet', is_train=False)
    opt['tile'] = opt['val']['tile'] = dict(tile_size=64, tile_pad=8)
    with pytest.raises(OptionError, match='both set'):
        build_model(opt)
    opt['val']['tile'] = dict(tile_size=64, tile_pad=64)
    del opt['tile']
    with pytest.raises(OptionError, match='tile_pad'):
        build_model(opt)  # the model checks too: it is also built without the entry points' check
