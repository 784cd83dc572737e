"""Baseline options (DCP, DehazeNet recovery) as frozen, self-validating dataclasses: KEY=VALUE text and typed YAML
parse into the same instance, every bad value is an error naming its key, presets and old spellings resolve into the
same dataclass, and the CLI, the benchmark and the DehazeNet YAMLs go through them."""
import dataclasses
import os
import re

import cv2
import mixcl_arch  # noqa: F401  (registers DehazeNet & co, patches basicsr)
import numpy as np
import pytest
import torch

from _train_helpers import load_script
from mixcl_arch.archs.dehazenet_arch import DehazeNet
from mixcl_arch.baselines.common import ATMO_MODE_ALIASES, ATMO_MODES
from mixcl_arch.baselines.dcp import DCPParams, DCPRestorer, dcp_dehaze, estimate_atmospheric_light
from mixcl_arch.baselines.dehazenet import DehazeNetRecoveryParams, DehazeNetRestorer, dehazenet_recover, \
    estimate_atmospheric_light_from_t
from mixcl_arch.utils.checkpoint import atomic_torch_save
from mixcl_arch.utils.options import OptionError, load_yaml_file, safe_load

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))
SHARED = ('top_ratio', 'atmo_mode', 'a_min', 'refine', 'gf_radius', 'gf_window', 'gf_border', 'gf_eps', 't0', 'clamp')

# (class, KEY=VALUE text, the same options as YAML)
ROUTES = [
    (DCPParams, {'patch_radius': '3', 'omega': '0.8', 'top_ratio': '0.01', 'atmo_mode': 'mean', 'a_min': '0.01',
                 'refine': 'no', 'gf_radius': '5', 'gf_window': '9', 'gf_border': 'reflect101', 'gf_eps': '1e-3',
                 't0': '0.2', 'clamp': 'false'},
     'patch_radius: 3\nomega: 0.8\ntop_ratio: 0.01\natmo_mode: mean\na_min: 0.01\nrefine: false\ngf_radius: 5\n'
     'gf_window: 9\ngf_border: reflect101\ngf_eps: 1e-3\nt0: 0.2\nclamp: false\n'),
    (DCPParams, {'gf_window': '~', 'refine': '1', 'omega': '1'}, 'gf_window: null\nrefine: true\nomega: 1\n'),
    (DehazeNetRecoveryParams, {'a_normalize': 'off', 'top_ratio': '0.05', 'atmo_mode': 'channel_max', 'a_min': '0.1',
                               'refine': 'yes', 'gf_radius': '8', 'gf_window': 'none', 'gf_border': 'clip',
                               'gf_eps': '0.01', 't0': '0.3', 'clamp': '0', 'tile': '64', 'tile_overlap': '16'},
     'a_normalize: false\ntop_ratio: 0.05\natmo_mode: channel_max\na_min: 0.1\nrefine: true\ngf_radius: 8\n'
     'gf_window: ~\ngf_border: clip\ngf_eps: 0.01\nt0: 0.3\nclamp: false\ntile: 64\ntile_overlap: 16\n'),
    (DehazeNetRecoveryParams, {'tile': 'null', 'tile_overlap': '0', 'a_min': '1'},
     'tile: ~\ntile_overlap: 0\na_min: 1\n'),
]


@pytest.mark.parametrize('cls, text, yaml_text', ROUTES)
def test_text_and_yaml_give_the_same_dataclass(cls, text, yaml_text):
    typed = safe_load(yaml_text)
    from_text = cls.from_strings(text)
    assert from_text == cls.from_mapping(typed) == cls(**typed)
    assert from_text != cls()  # every case changes something
    for key in typed:  # the declared types (omega: 1 -> 1.0), as the defaults have them
        got, default = getattr(from_text, key), getattr(cls(), key)
        assert got is None or default is None or type(got) is type(default), (key, got)


# (key, a bad typed value, a bad text value); the keys both baselines share are checked for both
SHARED_BAD = [('top_ratio', 0, 'abc'), ('atmo_mode', 'median', 'median'), ('a_min', 0, '2'), ('refine', 1, 'maybe'),
              ('gf_radius', -1, '2.5'), ('gf_window', 0, '0'), ('gf_border', 'wrap', 'wrap'), ('gf_eps', 0, '-1'),
              ('t0', 1.0, '0'), ('clamp', 'yes', 'sure')]
BAD = ([(DCPParams, *case) for case in SHARED_BAD + [('patch_radius', -1, 'x'), ('omega', 0, '1.5')]]
       + [(DehazeNetRecoveryParams, *case) for case in SHARED_BAD + [('a_normalize', 'true', 'sometimes'),
                                                                     ('tile', -1, 'big'), ('tile_overlap', -2, '1.5')]])


@pytest.mark.parametrize('cls, key, bad, bad_text', BAD, ids=[f'{c.SECTION}.{k}' for c, k, _, _ in BAD])
def test_every_bad_value_is_an_error_naming_key_value_and_range(cls, key, bad, bad_text):
    with pytest.raises(OptionError) as typed:
        cls.from_mapping({key: bad}, 'val.recovery')
    assert str(typed.value).startswith(f'val.recovery.{key}: expected ') and repr(bad) in str(typed.value)
    with pytest.raises(OptionError) as text:
        cls.from_strings({key: bad_text})
    assert str(text.value).startswith(f'{cls.SECTION}.{key}: expected ') and bad_text in str(text.value)
    with pytest.raises(OptionError, match=f'^{cls.SECTION}.{key}: expected '):
        cls(**{key: bad})


def test_unknown_keys_and_cross_checks():
    with pytest.raises(OptionError, match=r"^dcp: unknown key\(s\) \['radius'\]; allowed: \['top_ratio', .*"
                                          r"'patch_radius', 'omega', 'preset'\]"):
        DCPParams.from_strings({'radius': '3'})
    with pytest.raises(OptionError, match=r"^val.recovery: unknown key\(s\) \['omega', 'preset'\]; allowed: .*"
                                          r"'tile_overlap'\]"):
        DehazeNetRecoveryParams.from_mapping({'omega': 0.9, 'preset': 'paper'}, 'val.recovery')  # no presets here
    with pytest.raises(OptionError, match=r'^dehazenet.tile_overlap: expected an integer < tile \(40\), got 40'):
        DehazeNetRecoveryParams(tile=40, tile_overlap=40)
    assert DehazeNetRecoveryParams(tile=0, tile_overlap=40).tile == 0  # tiling off: any overlap


def test_presets_resolve_into_the_same_dataclass():
    lab = DCPParams(atmo_mode='channel_max', gf_window=60, gf_border='reflect101')
    assert DCPParams.from_strings({'preset': 'lab_report'}) == DCPParams.from_mapping({'preset': 'lab_report'}) == lab
    assert DCPParams.from_strings({'preset': 'lab_report', 'gf_window': '30'}) == dataclasses.replace(lab, gf_window=30)
    assert DCPParams.from_mapping({'preset': 'paper'}) == DCPParams()
    with pytest.raises(OptionError, match="^dcp.preset: expected one of 'paper', 'lab_report', got 'lab'"):
        DCPParams.from_strings({'preset': 'lab'})


def test_shared_options_have_one_name_one_check_and_one_mode_tuple():
    dcp_checks = {f.name: f.metadata['check'] for f in dataclasses.fields(DCPParams)}
    dn_checks = {f.name: f.metadata['check'] for f in dataclasses.fields(DehazeNetRecoveryParams)}
    assert set(SHARED) == set(dcp_checks) & set(dn_checks)
    assert all(dcp_checks[k] is dn_checks[k] for k in SHARED)
    # every mode works in both baselines; the old spellings are aliases, stored under the shared name
    x = torch.rand(2, 3, 20, 24, generator=torch.Generator().manual_seed(0))
    score = torch.rand(2, 1, 20, 24, generator=torch.Generator().manual_seed(1))
    for mode in ATMO_MODES:
        assert DCPParams(atmo_mode=mode).atmo_mode == DehazeNetRecoveryParams(atmo_mode=mode).atmo_mode == mode
        assert estimate_atmospheric_light(x, score, 0.05, mode).shape == (2, 3)
        assert estimate_atmospheric_light_from_t(x, score, 0.05, mode).shape == (2, 3)
    for old, new in ATMO_MODE_ALIASES.items():
        assert DCPParams.from_strings({'atmo_mode': old}) == DCPParams(atmo_mode=new)
        assert DehazeNetRecoveryParams.from_mapping({'atmo_mode': old}) == DehazeNetRecoveryParams(atmo_mode=new)
        assert torch.equal(estimate_atmospheric_light(x, score, 0.05, old),
                           estimate_atmospheric_light(x, score, 0.05, new))
    grey_a = estimate_atmospheric_light_from_t(x, score, 0.05, 'brightest_grey')
    assert torch.all(grey_a[:, 0] == grey_a[:, 2])  # DehazeNet's default: a grey A
    assert not torch.equal(estimate_atmospheric_light_from_t(x, score, 0.05, 'brightest'), grey_a)


def test_params_are_frozen_and_inner_functions_take_them():
    p = DCPParams()
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.omega = 0.5
    with pytest.raises(OptionError, match='^dcp.omega: expected a number > 0 and <= 1, got 3'):
        dataclasses.replace(p, omega=3)  # a changed copy is checked again
    assert 'where' not in dataclasses.asdict(p)  # the error-path init argument is not an option
    x = torch.rand(1, 3, 16, 16)
    with pytest.raises(TypeError, match='DCPParams'):
        dcp_dehaze(x, {'omega': 0.9})
    with pytest.raises(TypeError, match='DehazeNetRecoveryParams'):
        dehazenet_recover(x, torch.rand(1, 1, 16, 16), {'t0': 0.2})
    with pytest.raises(ValueError, match='either params'):
        DCPRestorer(params=p, omega=0.5)
    assert DCPRestorer(omega=0.5).params == DCPRestorer.from_strings({'omega': '0.5'}).params == DCPParams(omega=0.5)


def _image(folder):
    folder.mkdir()
    img = np.random.default_rng(0).uniform(0.3, 0.9, (24, 32, 3))
    assert cv2.imwrite(str(folder / 'h.png'), (img * 255).round().astype(np.uint8))


def test_cli_param_text_reaches_the_dataclass_and_bad_text_is_a_clear_error(tmp_path, capsys):
    from mixcl_arch.dehaze import _build, main
    from mixcl_arch.dehaze_args import parse_args
    _image(tmp_path / 'in')
    base = ['-i', str(tmp_path / 'in'), '-o', str(tmp_path / 'out'), '--method', 'dcp']
    assert main(base + ['--param', 'omega=abc']) == 1
    assert "error: dcp.omega: expected a number > 0 and <= 1, got 'abc' (str)." in capsys.readouterr().err
    assert not (tmp_path / 'out' / 'h.png').exists()
    assert main(base + ['--param', 'refine=maybe']) == 1
    assert "dcp.refine: expected true or false, got 'maybe'" in capsys.readouterr().err
    r = _build(parse_args(base + ['--param', 'preset=lab_report', '--param', 'refine=no', '--param', 'gf_window=~']))
    assert r.params == DCPParams(atmo_mode='channel_max', refine=False, gf_border='reflect101')
    # DehazeNet: --param text plus the CLI's tiling flags and --allow-unsafe-pickle, all into its dataclass
    weights = str(tmp_path / 'dn.pth')
    atomic_torch_save({'params': DehazeNet().state_dict()}, weights)
    dn = ['-i', str(tmp_path / 'in'), '-o', str(tmp_path / 'o2'), '--method', 'dehazenet', '--weights', weights,
          '--tile', '64', '--tile-overlap', '24', '--allow-unsafe-pickle']
    r = _build(parse_args(dn + ['--param', 't0=0.2', '--param', 'atmo_mode=color']))
    assert r.params == DehazeNetRecoveryParams(t0=0.2, atmo_mode='brightest', tile=64, tile_overlap=24)
    assert main(dn + ['--param', 'tile_overlap=64']) == 1
    assert 'dehazenet.tile_overlap: expected an integer < tile (64), got 64' in capsys.readouterr().err


def _benchmark_module():
    return load_script('benchmark_quality')


def test_benchmark_spec_text_and_methods_yaml_give_the_same_params(tmp_path):
    bq = _benchmark_module()
    spec = bq.parse_method_spec('name=A,method=dcp,omega=0.8,gf_window=~,refine=no,atmo_mode=max')
    assert spec['params'] == {'omega': '0.8', 'gf_window': '~', 'refine': 'no', 'atmo_mode': 'max'} and spec['text']
    entry = safe_load('{name: B, method: dcp, params: {omega: 0.8, gf_window: ~, refine: false, atmo_mode: max}}')
    from_yaml = bq.normalize_method(entry, 'methods.yml[0]')
    want = DCPParams(omega=0.8, refine=False)
    assert bq.build(spec, 'cpu').params == bq.build(from_yaml, 'cpu').params == want
    with pytest.raises(OptionError, match="^dcp.omega: expected a number > 0 and <= 1, got 'abc'"):
        bq.build(bq.parse_method_spec('method=dcp,omega=abc'), 'cpu')
    with pytest.raises(OptionError, match="^dcp.omega: expected a number > 0 and <= 1, got '0.8' \\(str\\)"):
        bq.build(bq.normalize_method(safe_load("{method: dcp, omega: '0.8'}"), 'methods.yml[0]'), 'cpu')
    weights = str(tmp_path / 'dn.pth')
    atomic_torch_save({'params': DehazeNet().state_dict()}, weights)
    dn = bq.build(bq.parse_method_spec(f'method=dehazenet,weights={weights},param_key=params,a_normalize=false'),
                  'cpu')
    assert isinstance(dn, DehazeNetRestorer) and dn.params == DehazeNetRecoveryParams(a_normalize=False)


@pytest.mark.parametrize('name', ['train/train_DehazeNet_demo', 'train/train_DehazeNet_RESIDE6K',
                                  'test/test_DehazeNet_demo', 'test/test_DehazeNet_RESIDE6K'])
def test_shipped_dehazenet_yaml_recovery_keys(name):
    opt = load_yaml_file(os.path.join(ROOT, 'options', f'{name}.yml'))  # the project's loader, as train/test use
    rec = opt['val']['recovery']
    assert set(rec) == set(DehazeNetRecoveryParams.keys()) - {'gf_window', 'gf_border', 'tile', 'tile_overlap'}
    assert DehazeNetRecoveryParams.from_mapping(rec, 'val.recovery') == DehazeNetRecoveryParams()


def test_dehazenet_model_reads_val_recovery_yaml():
    from basicsr.models import build_model
    rec_yaml = ('recovery:\n  a_normalize: false\n  atmo_mode: grey\n  gf_eps: 1e-2\n  gf_window: 7\n  t0: 0.2\n'
                '  tile: 48\n  tile_overlap: 16\n')
    base = dict(name='x', model_type='DehazeNetModel', num_gpu=0, is_train=False, dist=False, rank=0, world_size=1,
                network_g=dict(type='DehazeNet'), path=dict(pretrain_network_g=None))
    model = build_model(dict(base, val=safe_load(rec_yaml)))
    assert model.recovery == DehazeNetRecoveryParams(a_normalize=False, gf_eps=0.01, gf_window=7, t0=0.2, tile=48,
                                                     tile_overlap=16)
    with pytest.raises(OptionError, match=re.escape("val.recovery.t0: expected a number > 0 and < 1, got '0.2' (str) "
                                                    '(a quoted string')):
        build_model(dict(base, val=safe_load("recovery: {t0: '0.2'}")))


def test_cliphaze_dcp_options_mix_yaml_values_and_cli_text():
    from mixcl_arch.clip.cliphaze_cond import CLIPHazeCondConfig
    cfg = CLIPHazeCondConfig(density_source='dcp', dcp={'preset': 'lab_report', 'omega': 0.9, 'patch_radius': '3'})
    want = DCPParams(atmo_mode='channel_max', gf_window=60, gf_border='reflect101', omega=0.9, patch_radius=3)
    assert cfg.dcp_restorer().params == want
    with pytest.raises(ValueError, match="cliphaze_cond.dcp: dcp.patch_radius: expected an integer >= 0, got 'x'"):
        CLIPHazeCondConfig(density_source='dcp', dcp={'patch_radius': 'x'})
