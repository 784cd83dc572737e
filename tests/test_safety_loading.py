"""Loading a file never runs code (issue 12, items 1-2): crafted checkpoints through every weights entry point.

Each crafted file holds an object whose unpickling calls ``exec`` to write a marker file (a stand-in for any command
an attacker picks). Every test asserts that the marker never appears and that the error names the file and says how
to opt in. The opt-in (``--allow-unsafe-pickle`` / ``path.allow_unsafe_pickle``), safetensors and explicit
``param_key`` strictness are covered at the end.
"""
import argparse
import os
import subprocess
import sys
import warnings
import zipfile

import cv2
import numpy as np
import pytest
import torch

from mixcl_arch.archs.mixdehazenet_arch import MixCLDehazeNet, MixDehazeNet
from _net_helpers import randomize_bn
from _train_helpers import TEST, TRAIN, make_pair_dataset, tiny_train_opt, write_yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(embed_dims=[8, 16, 16, 16, 8], depths=[1, 1, 1, 1, 1])

pytestmark = pytest.mark.usefixtures('one_thread')


def model_opt(tmp_path, is_train=True, **train_extra):
    """In-process MixCLDehazeModel options around a tiny MixDehazeNet (for build_model, no entry point)."""
    scheduler = dict(type='CosineAnnealingRestartLR', periods=[10], restart_weights=[1], eta_min=1e-6)
    train = dict(optim_g=dict(type='AdamW', lr=1e-3), total_iter=10, warmup_iter=-1, scheduler=scheduler,
                 pixel_opt=dict(type='L1Loss', loss_weight=1.0), **train_extra)
    exp = tmp_path / 'exp'
    path = dict(pretrain_network_g=None, strict_load_g=True, models=str(exp / 'models'),
                training_states=str(exp / 'training_states'))
    net = dict(type='MixDehazeNet', **TINY, data_range='unit')
    return dict(name='unit', model_type='MixCLDehazeModel', num_gpu=0, is_train=is_train, dist=False, rank=0,
                world_size=1, manual_seed=0, datasets={}, network_g=net, train=train, path=path)


class WritesMarker:
    """Unpickling this object runs ``exec``, which writes ``marker``: any code could run the same way."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f'open({self.marker!r}, "w").write("code ran")', )


def crafted(path, marker, **extra):
    """A ``.pth`` whose only network entry is the payload (extra entries are stored next to it)."""
    torch.save({'params': WritesMarker(marker), **extra}, path)
    return str(path)


def assert_refused(message, path, marker):
    """No code ran, and the message names the file, the safe loader and the opt-in."""
    assert not os.path.exists(marker), 'the crafted checkpoint executed code'
    assert str(path) in message and 'weights_only' in message
    assert 'allow-unsafe-pickle' in message or 'allow_unsafe_pickle' in message


@pytest.fixture()
def evil(tmp_path):
    marker = tmp_path / 'MARKER'
    return crafted(tmp_path / 'evil.pth', marker), marker


@pytest.fixture(scope='module')
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp('img') / 'hazy.png'
    cv2.imwrite(str(path), np.full((24, 28, 3), 128, np.uint8))
    return str(path)


def run_dehaze(argv, capsys):
    from mixcl_arch.dehaze import main
    rc = main(argv)
    out = capsys.readouterr()
    return rc, out.out + out.err


# ------------------------------------------------------------------------------------ item 1: every weights path
@pytest.mark.parametrize('method', ['net', 'dehazenet'])
def test_cli_weights_never_unpickle(method, evil, image, tmp_path, capsys):
    path, marker = evil
    rc, out = run_dehaze(['-i', image, '-o', str(tmp_path / 'out'), '--method', method, '--weights', path,
                          '--device', 'cpu'], capsys)
    assert rc == 1
    assert_refused(out, path, marker)


def test_convert_official_checkpoint_never_unpickles(evil, tmp_path):
    path, marker = evil
    with pytest.raises(ValueError) as err:
        load_script('convert_official_checkpoint').main(['-i', path, '-o', str(tmp_path / 'converted.pth')])
    assert not os.path.exists(tmp_path / 'converted.pth')
    assert_refused(str(err.value), path, marker)


def load_script(name):
    import importlib.util
    spec = importlib.util.spec_from_file_location(f'{name}_safety', os.path.join(ROOT, 'scripts', f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def bench_data(root):
    """One 16x16 hazy/GT pair: enough for the benchmark to build and run a method."""
    for sub in ('hazy', 'GT'):
        os.makedirs(root / sub)
        cv2.imwrite(str(root / sub / 'a.png'), np.full((16, 16, 3), 100, np.uint8))
    return str(root)


def run_benchmark(tmp_path, spec):
    return load_script('benchmark_quality').main(['--data', bench_data(tmp_path / 'data'), '--out',
                                                  str(tmp_path / 'bench'), '--figure', '0', '--quiet', '--method',
                                                  spec])


def test_benchmark_quality_never_unpickles(evil, tmp_path):
    path, marker = evil
    with pytest.raises(ValueError) as err:
        run_benchmark(tmp_path, f'name=N,method=net,weights={path}')
    assert_refused(str(err.value), path, marker)


def test_contrast_loss_resnet_path_never_unpickles(evil):
    from mixcl_arch.losses.contrast_loss import ContrastLossRes
    path, marker = evil
    with pytest.raises(ValueError) as err:
        ContrastLossRes(resnet_path=path, depth=18)
    assert_refused(str(err.value), path, marker)


@pytest.fixture(scope='module')
def pipeline_dir(tmp_path_factory):
    work = tmp_path_factory.mktemp('pipeline')
    make_pair_dataset(str(work / 'datasets' / 'tiny'), n_train=2, n_test=1)
    return work


def run_entry_rc(script, yml, cwd):
    env = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', PYTHONWARNINGS='ignore')
    proc = subprocess.run([sys.executable, script, '-opt', yml], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=240)
    return proc.returncode, proc.stdout + proc.stderr


@pytest.mark.parametrize('entry', ['train', 'test'])
def test_pretrain_network_g_never_unpickles(entry, pipeline_dir, tmp_path):
    marker = tmp_path / 'MARKER'
    path = crafted(tmp_path / 'evil.pth', marker)
    opt = tiny_train_opt(os.path.join('datasets', 'tiny'), name=f'evil_{entry}', total_iter=1)
    opt['path']['pretrain_network_g'] = path
    if entry == 'test':
        opt = {k: v for k, v in opt.items() if k not in ('train', 'logger')}
        opt['datasets'] = {'test_1': opt['datasets']['val']}
    rc, out = run_entry_rc(TRAIN if entry == 'train' else TEST, write_yaml(opt, tmp_path / 'opt.yml'),
                           str(pipeline_dir))
    assert rc != 0
    assert_refused(out, path, marker)


# ------------------------------------------------------------------------------------------- item 2: CLIP weights
@pytest.fixture(scope='module')
def clip_state(tmp_path_factory):
    from _clip_helpers import make_tiny_clip
    path = make_tiny_clip(tmp_path_factory.mktemp('clip') / 'tiny_clip.pt')
    return torch.load(path, weights_only=True)['state_dict']


def clip_prior(path, **kw):
    from _clip_helpers import tiny_clip_opt
    from mixcl_arch.clip.prior import CLIPPrior
    return CLIPPrior.from_opt(tiny_clip_opt(path, **kw))


def test_clip_file_with_code_entry_is_not_treated_as_torchscript(clip_state, tmp_path):
    """An ordinary torch.save file (with a pickle payload) plus an appended ``archive/code/`` entry."""
    from mixcl_arch.clip.weights import CLIPWeightsError
    marker = tmp_path / 'MARKER'
    path = tmp_path / 'clip.pt'
    torch.save({'state_dict': clip_state, 'extra': WritesMarker(marker)}, path)
    prefix = zipfile.ZipFile(path).namelist()[0].split('/')[0]
    with zipfile.ZipFile(path, 'a') as zf:
        zf.writestr(f'{prefix}/code/__torch__/model.py', 'def forward(self): pass\n')
    with pytest.raises(CLIPWeightsError) as err:
        clip_prior(path)
    assert not marker.exists(), 'the crafted CLIP file executed code'
    msg = str(err.value)
    assert str(path) in msg and 'clip.torchscript: true' in msg and 'open_clip_pytorch_model.bin' in msg
    # asking for TorchScript does not unpickle it either: it has no constants.pkl, so it is not an archive
    with pytest.raises(CLIPWeightsError, match='not a TorchScript archive'):
        clip_prior(path, torchscript=True)
    assert not marker.exists()


def test_clip_pickle_payload_is_refused_even_where_open_clip_would_retry(clip_state, tmp_path, monkeypatch):
    """open_clip retries a load that raised TypeError with torch.load's default, which unpickles under
    TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 (and on torch < 2.6). The payload raises TypeError under weights_only
    (BUILD of an OrderedDict with a (None, {}) state) and is harmless to the full unpickler before the marker."""
    from collections import OrderedDict

    from mixcl_arch.clip.weights import CLIPWeightsError

    class TypeErrorUnderWeightsOnly:

        def __reduce__(self):
            return OrderedDict, (), (None, {})

    marker = tmp_path / 'MARKER'
    path = tmp_path / 'clip.bin'
    torch.save([TypeErrorUnderWeightsOnly(), WritesMarker(marker), {'state_dict': clip_state}], path)
    with pytest.raises(TypeError):  # what open_clip sees first
        torch.load(path, weights_only=True)
    monkeypatch.setenv('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', '1')
    with pytest.raises(CLIPWeightsError) as err:
        clip_prior(path)
    assert not marker.exists(), 'open_clip unpickled the CLIP file'
    assert str(path) in str(err.value) and 'weights_only=True' in str(err.value)


def torchscript_archive(state, path):
    """A TorchScript archive holding ``state`` under the same names (the layout of OpenAI's CLIP files)."""
    root = torch.nn.Module()
    for name, value in state.items():
        module = root
        *parents, leaf = name.split('.')
        for part in parents:
            if not hasattr(module, part):
                module.add_module(part, torch.nn.Module())
            module = getattr(module, part)
        module.register_buffer(leaf, value.clone())
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', FutureWarning)  # torch.jit deprecation notices
        torch.jit.save(torch.jit.script(root), str(path))
    return str(path)


def test_clip_torchscript_loads_only_when_asked(clip_state, tmp_path):
    from mixcl_arch.clip.weights import CLIPWeightsError
    path = torchscript_archive(clip_state, tmp_path / 'ViT-tiny.pt')
    with pytest.raises(CLIPWeightsError, match='clip.torchscript: true'):
        clip_prior(path)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        prior = clip_prior(path, torchscript=True)
    got = prior.model.state_dict()
    assert set(got) == set(clip_state) and all(torch.equal(got[k], clip_state[k]) for k in got)
    assert prior.quick_gelu  # OpenAI's TorchScript weights use QuickGELU


def test_clip_torchscript_flag_reaches_the_prior_from_both_command_lines():
    from mixcl_arch.dehaze_args import parse_args
    assert parse_args(['-i', 'x', '-o', 'y', '--weights', 'w', '--clip-torchscript']).clip_torchscript
    ecf = load_script('extract_clip_features')
    args = ecf.parse_args(['--dataroot', 'd', '--pretrained', 'ViT-B-32.pt', '--clip-torchscript'])
    assert ecf.conditioning_options(args, None).clip.as_dict()['torchscript'] is True
    assert 'torchscript' not in ecf.conditioning_options(ecf.parse_args(['--dataroot', 'd']), None).clip.as_dict()


# ------------------------------------------------------------------------------ the explicit opt-in (legacy pickles)
def official_file(net, path, **extra):
    """The original code's checkpoint layout: DataParallel names under state_dict, plus training extras."""
    torch.save({'state_dict': {'module.' + k: v for k, v in net.state_dict().items()}, 'epoch': 3, **extra}, path)
    return str(path)


def tiny_net(cls=MixDehazeNet, seed=0):
    """Tiny net whose BatchNorm statistics differ per seed, so different weights give different outputs."""
    torch.manual_seed(seed)
    return randomize_bn(cls(**TINY, data_range='unit'), seed).eval()


@pytest.fixture(scope='module')
def legacy(tmp_path_factory):
    """A checkpoint as some training scripts write it: the weights plus an argparse.Namespace."""
    net = tiny_net()
    path = tmp_path_factory.mktemp('legacy') / 'legacy.pth'
    torch.save({'params': net.state_dict(), 'args': argparse.Namespace(lr=1e-3)}, path)
    return str(path), net


def test_opt_in_loads_a_legacy_checkpoint_and_warns(legacy):
    from mixcl_arch.utils.checkpoint import CheckpointLoadError, UnsafePickleWarning, load_checkpoint_file
    path, net = legacy
    with pytest.raises(CheckpointLoadError, match='Namespace'):
        load_checkpoint_file(path)
    with pytest.warns(UnsafePickleWarning, match='arbitrary code'):
        ckpt = load_checkpoint_file(path, allow_unsafe_pickle=True)
    assert ckpt['args'].lr == 1e-3 and all(torch.equal(ckpt['params'][k], v) for k, v in net.state_dict().items())


@pytest.mark.parametrize('entry', ['cli-net', 'cli-dehazenet', 'benchmark', 'convert', 'build_restorer'])
def test_opt_in_flags_load_a_legacy_checkpoint(entry, legacy, image, tmp_path, capsys):
    path, net = legacy
    if entry == 'cli-dehazenet':
        from mixcl_arch.archs.dehazenet_arch import DehazeNet
        path = str(tmp_path / 'dehazenet_legacy.pth')
        torch.save({'params': DehazeNet().state_dict(), 'args': argparse.Namespace(lr=1e-3)}, path)
    elif entry == 'convert':
        path = official_file(net, tmp_path / 'official_legacy.pth', args=argparse.Namespace(lr=1e-3))

    def run(opt_in):
        if entry.startswith('cli'):
            argv = ['-i', image, '-o', str(tmp_path / 'out'), '--weights', path, '--device', 'cpu', '--method',
                    entry[len('cli-'):]]
            rc, out = run_dehaze(argv + ['--allow-unsafe-pickle'] * opt_in, capsys)
            if rc:
                raise ValueError(out)
            assert (tmp_path / 'out' / 'hazy.png').is_file()
        elif entry == 'benchmark':
            unsafe = ',allow_unsafe_pickle=true' if opt_in else ''
            run_benchmark(tmp_path / str(opt_in), f'name=N,method=net,weights={path}{unsafe}')
        elif entry == 'convert':
            load_script('convert_official_checkpoint').main(['-i', path, '-o', str(tmp_path / f'c{opt_in}.pth')] +
                                                            ['--allow-unsafe-pickle'] * opt_in)
        else:
            from mixcl_arch.restorers import build_restorer
            build_restorer('net', path, allow_unsafe_pickle=opt_in)

    with pytest.raises(ValueError, match='allow.unsafe.pickle'):
        run(False)
    with pytest.warns(UserWarning, match='arbitrary code'):
        run(True)


def test_opt_in_yaml_key_for_pretrain_network_g(legacy, tmp_path):
    from basicsr.models import build_model
    path, net = legacy
    opt = model_opt(tmp_path, is_train=False)
    opt['path'].update(pretrain_network_g=path, param_key_g='params')
    with pytest.raises(ValueError, match='path.allow_unsafe_pickle'):
        build_model(opt)
    opt['path']['allow_unsafe_pickle'] = True
    with pytest.warns(UserWarning, match='arbitrary code'):
        model = build_model(opt)
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in model.net_g.state_dict().items())


def test_opt_in_for_contrast_loss_resnet(tmp_path):
    import torchvision

    from mixcl_arch.losses.contrast_loss import ContrastLossRes
    path = tmp_path / 'resnet18_legacy.pth'
    torch.save({'state_dict': torchvision.models.resnet18().state_dict(), 'args': argparse.Namespace(a=1)}, path)
    with pytest.raises(ValueError, match='allow_unsafe_pickle'):
        ContrastLossRes(resnet_path=str(path), depth=18)
    with pytest.warns(UserWarning, match='arbitrary code'):
        ContrastLossRes(resnet_path=str(path), depth=18, allow_unsafe_pickle=True)
    with pytest.raises(ValueError, match='true or false'):
        ContrastLossRes(resnet_path=str(path), depth=18, allow_unsafe_pickle='yes')


# --------------------------------------------------------------------------------------------------- safetensors
def test_safetensors_conversion_round_trip_gives_identical_outputs(tmp_path):
    from mixcl_arch.restorers import ConditioningFallbackWarning, build_restorer
    from mixcl_arch.utils.checkpoint import is_safetensors_file, load_checkpoint_file
    conv = load_script('convert_official_checkpoint')
    official = official_file(tiny_net(MixCLDehazeNet), tmp_path / 'official.pth')
    by_ext, by_flag = str(tmp_path / 'net.safetensors'), str(tmp_path / 'net_st.pth')
    conv.main(['-i', official, '-o', by_ext])
    conv.main(['-i', official, '-o', by_flag, '--format', 'safetensors'])
    assert is_safetensors_file(by_ext) and is_safetensors_file(by_flag) and not is_safetensors_file(official)
    assert set(load_checkpoint_file(by_ext)) == {'params'}
    x = torch.rand(1, 3, 36, 44)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', ConditioningFallbackWarning)
        ref, a, b = (build_restorer('net', p, cond_fallback='none') for p in (official, by_ext, by_flag))
    assert torch.equal(ref(x), a(x)) and torch.equal(ref(x), b(x))


def test_safetensors_for_dehazenet_and_the_cr_resnet(tmp_path):
    import torchvision
    from safetensors.torch import save_file

    from mixcl_arch.archs.dehazenet_arch import DehazeNet
    from mixcl_arch.baselines.dehazenet import DehazeNetRestorer
    from mixcl_arch.losses.contrast_loss import ContrastLossRes
    from mixcl_arch.utils.checkpoint import save_weights_file
    torch.manual_seed(0)
    sd = DehazeNet().state_dict()
    torch.save({'params': sd}, tmp_path / 'dn.pth')
    save_weights_file({'params': sd}, tmp_path / 'dn.safetensors', 'safetensors')
    x = torch.rand(1, 3, 32, 32)
    a, b = (DehazeNetRestorer(str(tmp_path / f'dn.{ext}')) for ext in ('pth', 'safetensors'))
    assert torch.equal(a(x), b(x))
    resnet = torchvision.models.resnet18().state_dict()
    save_file({k: v.contiguous() for k, v in resnet.items()}, str(tmp_path / 'resnet18.safetensors'))
    loss = ContrastLossRes(resnet_path=str(tmp_path / 'resnet18.safetensors'), depth=18)
    assert torch.equal(loss.features.slice1[0].weight, resnet['conv1.weight'])


def test_training_saves_safetensors_and_resume_finds_them(tmp_path):
    from basicsr.models import build_model

    from mixcl_arch.utils.basicsr_fixes import load_resume_state
    from mixcl_arch.utils.checkpoint import is_safetensors_file, load_checkpoint_file
    opt = model_opt(tmp_path, ema_decay=0.5)
    opt['path']['save_format'] = 'safetensors'
    model = build_model(opt)
    gt = torch.rand(2, 3, 24, 24)
    model.feed_data(dict(lq=gt * 0.6 + 0.3, gt=gt))
    model.optimize_parameters(1)
    model.save(0, 1)
    saved = os.path.join(opt['path']['models'], 'net_g_1.safetensors')
    assert is_safetensors_file(saved) and not os.path.exists(saved[:-len('safetensors')] + 'pth')
    ckpt = load_checkpoint_file(saved)
    ema = model.net_g_ema.state_dict()
    assert set(ckpt) == {'params', 'params_ema', 'meta'}
    assert all(torch.equal(ckpt['params_ema'][k], ema[k]) for k in ema)
    assert not all(torch.equal(ckpt['params'][k], ema[k]) for k in ema)
    # BasicSR's check_resume names net_g_1.pth; the resumed network is the .safetensors file
    resume = dict(opt, auto_resume=False, root_path=str(tmp_path))
    resume['path'] = dict(opt['path'], resume_state=os.path.join(opt['path']['training_states'], '1.state'))
    assert load_resume_state(resume)['iter'] == 1
    assert resume['path']['pretrain_network_g'] == saved
    resumed = build_model(resume)
    assert all(torch.equal(v, ckpt['params'][k]) for k, v in resumed.net_g.state_dict().items())
    assert all(torch.equal(v, ema[k]) for k, v in resumed.net_g_ema.state_dict().items())
    with pytest.raises(ValueError, match='save_format'):
        build_model(dict(opt, path=dict(opt['path'], save_format='onnx'))).save_network(model.net_g, 'net_g', 2)


# ----------------------------------------------------------------------------------- param_key strictness (17.5)
@pytest.fixture(scope='module')
def two_nets(tmp_path_factory):
    d = tmp_path_factory.mktemp('keys')
    raw, ema = tiny_net(seed=1), tiny_net(seed=2)
    paths = {'both': str(d / 'both.pth'), 'params': str(d / 'params.pth'), 'ema': str(d / 'ema.pth'),
             'official': official_file(raw, d / 'official.pth')}
    torch.save({'params': raw.state_dict(), 'params_ema': ema.state_dict()}, paths['both'])
    torch.save({'params': raw.state_dict()}, paths['params'])
    torch.save({'params_ema': ema.state_dict()}, paths['ema'])
    return paths, raw, ema


def same_weights(net, ref):
    return all(torch.equal(v, ref.state_dict()[k]) for k, v in net.state_dict().items())


def test_explicit_param_key_missing_is_an_error(two_nets, image, tmp_path, capsys):
    from basicsr.models import build_model

    from mixcl_arch.utils.checkpoint import load_network_weights
    paths, raw, ema = two_nets
    for key, path, present in (('params_ema', paths['params'], "['params']"), ('params', paths['ema'],
                                                                               "['params_ema']")):
        with pytest.raises(ValueError) as err:
            load_network_weights(tiny_net(), path, param_key=key)
        assert path in str(err.value) and f"no '{key}' weights" in str(err.value) and present in str(err.value)
    opt = model_opt(tmp_path, is_train=False)
    opt['path'].update(pretrain_network_g=paths['params'], param_key_g='params_ema')
    with pytest.raises(ValueError, match="no 'params_ema' weights"):
        build_model(opt)
    rc, out = run_dehaze(['-i', image, '-o', str(tmp_path / 'o'), '--weights', paths['params'], '--param-key',
                          'params_ema', '--device', 'cpu'], capsys)
    assert rc == 1 and "no 'params_ema' weights" in out


def test_param_key_selects_exactly_and_auto_prefers_the_ema(two_nets, tmp_path):
    from basicsr.models import build_model

    from mixcl_arch.restorers import build_net_from_checkpoint
    paths, raw, ema = two_nets
    opt = model_opt(tmp_path, is_train=False)
    for key, ref in (('params_ema', ema), ('params', raw)):
        opt['path'].update(pretrain_network_g=paths['both'], param_key_g=key)
        assert same_weights(build_model(opt).net_g, ref)
    assert same_weights(build_net_from_checkpoint(paths['both'])[0], ema)  # CLI default: auto
    # 'params' is the one network of an official file, so the shipped YAMLs (param_key_g: params) load them
    opt['path'].update(pretrain_network_g=paths['official'], param_key_g='params')
    assert same_weights(build_model(opt).net_g, raw)


def test_ema_seeded_from_a_file_without_ema_weights(two_nets, tmp_path):
    """BasicSR loads net_g_ema with 'params_ema' from pretrain_network_g; a file without them seeds it with its
    network weights (BasicSR's own behaviour), the one place where the key is chosen automatically."""
    from basicsr.models import build_model
    paths, raw, ema = two_nets
    opt = model_opt(tmp_path, ema_decay=0.9)
    opt['path'].update(pretrain_network_g=paths['official'], param_key_g='params')
    model = build_model(opt)
    assert same_weights(model.net_g, raw) and same_weights(model.net_g_ema, raw)
    opt['path']['pretrain_network_g'] = paths['both']
    model = build_model(opt)
    assert same_weights(model.net_g, raw) and same_weights(model.net_g_ema, ema)
