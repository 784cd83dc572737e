"""Export to ONNX / torch.export through scripts/export.py, and the ONNX Runtime runner (issue 15, item 3).

Each registered net is exported once (tiny widths) from a checkpoint by the script, then the files are compared with
the eager net on odd sizes, one of them below the 40 px MixDehazeNet pads to, with a batch size other than the
example's (dynamic axes, not sizes baked in at trace time).
"""
import importlib.util
import json
import os

import pytest
import torch
import yaml

from mixcl_arch.export import OnnxRuntimeRunner, export_spec, load_pt2, read_onnx_metadata
from mixcl_arch.restorers import NetRestorer, build_net_from_checkpoint
from _net_helpers import randomize_bn

pytestmark = pytest.mark.usefixtures('one_thread')
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))
_spec = importlib.util.spec_from_file_location('export_script', os.path.join(ROOT, 'scripts', 'export.py'))
export_script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(export_script)

TINY = {'embed_dims': [8, 16, 16, 16, 8], 'depths': [1, 1, 1, 1, 1]}
# network_g of each export; None: inferred from the checkpoint (as mixcl-dehaze does). text_dim 128 keeps the
# exported fusion small (2 text chunks) while still accumulating over chunks; K = 2 conditioning vectors.
NETS = {
    'MixDehazeNet': None,
    'MixCLDehazeNet': {'type': 'MixCLDehazeNet', **TINY, 'num_cond': 2, 'text_dim': 128, 'data_range': 'signed'},
    'AODNet': {'type': 'AODNet'},
    'DehazeNet': {'type': 'DehazeNet'},
}
# (batch, H, W): odd sides, the last below 40 px on both; batch 3 differs from the example's 2 (dynamic batch)
SHAPES = [(1, 45, 61), (3, 67, 33), (1, 21, 37)]


def make_checkpoint(arch, folder):
    """A BasicSR checkpoint of a randomly initialised tiny ``arch`` (non-trivial BatchNorm statistics)."""
    from basicsr.archs import build_network
    opt = NETS[arch] or {'type': 'MixDehazeNet', **TINY}
    torch.manual_seed(0)
    net = randomize_bn(build_network(dict(opt)))
    path = os.path.join(folder, f'{arch}.pth')
    torch.save({'params': net.state_dict()}, path)
    return path


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    """arch -> (eager net as the script built it, onnx path, pt2 path), all exported by scripts/export.py."""
    folder = str(tmp_path_factory.mktemp('export'))
    out = {}
    for arch, opt in NETS.items():
        # the script's own check is covered by test_script_verifies_both_files; here the tests below check
        argv = ['--weights', make_checkpoint(arch, folder), '--out-dir', folder, '--verify-sizes']
        if opt is not None:
            opt_path = os.path.join(folder, f'{arch}.yml')
            with open(opt_path, 'w') as f:
                yaml.safe_dump({'network_g': opt}, f)
            argv += ['--opt', opt_path]
        assert export_script.main(argv) == 0
        net, _ = build_net_from_checkpoint(argv[1], {'network_g': opt} if opt else None)
        out[arch] = net, os.path.join(folder, f'{arch}.onnx'), os.path.join(folder, f'{arch}.pt2')
    return out


def eager_reference(net, x, *extra):
    """What the exported graph must compute: the eager net on [0, 1] images, converting a signed net's range."""
    signed = getattr(net, 'data_range', 'unit') == 'signed'
    with torch.no_grad():
        y = net(x * 2 - 1 if signed else x, *extra)
    return (y + 1) * 0.5 if signed else y


def extra_inputs(net, batch, seed=1):
    """() or the (B, K, E) unit-norm conditioning of a conditioned net."""
    if not net.num_cond:
        return ()
    g = torch.Generator().manual_seed(seed)
    return (torch.nn.functional.normalize(torch.randn(batch, net.num_cond, net.cond_dim, generator=g), dim=-1), )


@pytest.mark.parametrize('backend', ['onnxruntime', 'torch.export'])
@pytest.mark.parametrize('arch', list(NETS))
def test_export_equals_eager_on_odd_and_small_sizes(exported, arch, backend):
    net, onnx_path, pt2_path = exported[arch]
    if backend == 'onnxruntime':
        run = OnnxRuntimeRunner(onnx_path).run
    else:
        program, meta = load_pt2(pt2_path)
        assert meta == read_onnx_metadata(onnx_path)  # both files carry the same description
        run = program.module()
    for i, (batch, h, w) in enumerate(SHAPES):
        x = torch.rand(batch, 3, h, w, generator=torch.Generator().manual_seed(i))
        extra = extra_inputs(net, batch)
        ref = eager_reference(net, x, *extra)
        with torch.no_grad():
            out = run(x, *extra)
        assert out.shape == ref.shape == (batch, 1 if arch == 'DehazeNet' else 3, h, w)
        torch.testing.assert_close(out, ref, atol=1e-4, rtol=0, msg=f'{arch} {backend} {h}x{w}')


def test_onnx_file_describes_its_inputs(exported):
    import onnx
    meta = read_onnx_metadata(exported['MixCLDehazeNet'][1])
    assert (meta['arch'], meta['inputs'], meta['output']) == ('MixCLDehazeNet', ['image', 'cond'], 'dehazed')
    assert (meta['num_cond'], meta['cond_dim'], meta['tile_align']) == (2, 128, 4)
    assert meta['network_g']['text_dim'] == 128
    graph = onnx.load(exported['MixCLDehazeNet'][1]).graph
    dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in list(graph.input) + list(graph.output)}
    assert dims == {'image': ['batch', 3, 'height', 'width'], 'cond': ['batch', 2, 128],
                    'dehazed': ['batch', 3, 'height', 'width']}


class FixedCondition:
    """A conditioning source returning one fixed (B, K, E) tensor, with the ``notes`` restorers read."""

    notes = []

    def __init__(self, cond):
        self.cond = cond

    def __call__(self, x):
        return self.cond


@pytest.mark.parametrize('arch', ['MixCLDehazeNet', 'MixDehazeNet'])
def test_runner_tiles_match_eager_restorer(exported, arch):
    net, onnx_path, _ = exported[arch]
    x = torch.rand(1, 3, 90, 75, generator=torch.Generator().manual_seed(5))
    cond = FixedCondition(extra_inputs(net, 1)[0]) if net.num_cond else None
    runner = OnnxRuntimeRunner(onnx_path, tile=48, tile_overlap=16, cond=cond)
    calls = []
    run = runner.run
    runner.run = lambda *a: calls.append(a[0].shape) or run(*a)
    out = runner(x)
    assert len(calls) > 1 and all(s[-2:] == (48, 48) for s in calls)  # tiled, on the 4-px grid
    ref = NetRestorer(net, cond, tile=48, tile_overlap=16)(x)
    torch.testing.assert_close(out, ref, atol=1e-3, rtol=0)
    if net.num_cond:  # conditioning passed explicitly gives the same as the runner's source
        torch.testing.assert_close(runner(x, cond.cond), out, atol=0, rtol=0)


def test_runner_needs_conditioning_for_conditioned_net(exported, tmp_path):
    from mixcl_arch.conditioning.conditioner import build_conditioner
    from mixcl_arch.conditioning.config import ConditioningConfig
    runner = OnnxRuntimeRunner(exported['MixCLDehazeNet'][1])
    x = torch.rand(1, 3, 40, 40)
    with pytest.raises(ValueError, match=r'\(B, 2, 128\) conditioning'):
        runner(x)
    # docs/export.md: the runner describes its net (K, E), so the one conditioner is built for it directly
    cfg = ConditioningConfig.from_options({'clip': {'pretrained': str(tmp_path / 'absent.pt')},
                                           'conditioning': {'extra': ['image'], 'fallback': 'none'}})
    runner.cond = build_conditioner(cfg, runner, online=True)
    assert runner.cond.source == 'none'  # no CLIP weights here: the configured fallback, zero vectors
    torch.testing.assert_close(runner(x), runner(x, torch.zeros(1, 2, 128)), atol=0, rtol=0)
    with pytest.raises(ValueError, match=r'takes 2 conditioning vector\(s\)'):
        build_conditioner(cfg.replace(extra=()), runner, online=True)


def test_unknown_arch_is_refused_by_name():
    with pytest.raises(ValueError, match='No export spec for Linear'):
        export_spec(torch.nn.Linear(2, 2))


def test_script_verifies_both_files(tmp_path, capsys):
    weights = make_checkpoint('AODNet', str(tmp_path))
    opt = tmp_path / 'aod.yml'
    opt.write_text(yaml.safe_dump({'network_g': NETS['AODNet']}))
    argv = ['--weights', weights, '--opt', str(opt), '--out-dir', str(tmp_path), '--name', 'aod', '--verify-sizes',
            '33x47', '5']
    assert export_script.main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary['files'] == {'onnx': str(tmp_path / 'aod.onnx'), 'pt2': str(tmp_path / 'aod.pt2')}
    assert set(summary['max_abs_diff']) == {'onnxruntime', 'torch.export'}
    assert all(set(d) == {'33x47', '5x5'} and max(d.values()) <= 1e-4 for d in summary['max_abs_diff'].values())
    # a tolerance no computation meets makes the check, and so the exit status, fail
    assert export_script.main(argv + ['--formats', 'onnx', '--tolerance', '-1']) == 1
    assert 'differs from the eager net' in capsys.readouterr().err


def test_cached_onnx_exports_once_per_weights(tmp_path, monkeypatch):
    from mixcl_arch import export
    from mixcl_arch.archs.aodnet_arch import AODNet
    calls = []
    program = export.export_program
    monkeypatch.setattr(export, 'export_program', lambda net: calls.append(1) or program(net))
    net = AODNet()
    path, made = export.cached_onnx(net, {'type': 'AODNet'}, str(tmp_path))
    assert made and os.path.isfile(path) and read_onnx_metadata(path)['arch'] == 'AODNet'
    assert export.cached_onnx(net, {'type': 'AODNet'}, str(tmp_path)) == (path, False) and len(calls) == 1
    with torch.no_grad():
        net.conv1.bias.add_(0.1)  # other weights: another file
    other, made = export.cached_onnx(net, {'type': 'AODNet'}, str(tmp_path))
    assert made and other != path and len(calls) == 2
    x = torch.rand(1, 3, 9, 11)
    torch.testing.assert_close(OnnxRuntimeRunner(other).run(x), net(x).detach(), atol=1e-5, rtol=0)


def test_exported_fusion_equals_eager_fusion_at_extreme_temperatures():
    # the graph's text-chunked tilted mean must stay finite and exact where exp(alpha * t) overflows unshifted
    from mixcl_arch.archs.mixdehazenet_arch import _tilted_mean_text_chunks, tilted_mean
    g = torch.Generator().manual_seed(0)
    alpha = torch.cat([torch.randn(2, 300, generator=g) * scale for scale in (1, 100, 1e4)], dim=1)
    t = torch.nn.functional.normalize(torch.randn(2, 512, generator=g), dim=-1)
    out = _tilted_mean_text_chunks(alpha, t)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, tilted_mean(alpha, t), atol=1e-6, rtol=1e-5)


def test_backend_auto_picks_onnxruntime_only_for_float32_cpu(monkeypatch):
    from mixcl_arch import export
    assert export.resolve_backend('auto', torch.device('cpu')) == 'onnxruntime'
    assert export.resolve_backend('auto', torch.device('cpu'), amp='bf16') == 'torch'
    assert export.resolve_backend('auto', torch.device('cuda')) == 'torch'
    assert export.resolve_backend('torch', torch.device('cpu')) == 'torch'
    assert export.resolve_backend('auto', torch.device('cpu'), arch='CLIPHazeNet') == 'torch'  # not exportable
    for bad in [dict(device=torch.device('cuda')), dict(device=torch.device('cpu'), arch='CLIPHazeNet')]:
        with pytest.raises(ValueError, match='on the CPU in float32'):
            export.resolve_backend('onnxruntime', **bad)
    with pytest.raises(ValueError, match="got 'tensorrt'"):
        export.resolve_backend('tensorrt', torch.device('cpu'))
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, 'find_spec', lambda name: None if name == 'onnxruntime' else find_spec(name))
    assert export.resolve_backend('auto', torch.device('cpu')) == 'torch'  # the onnx extra is not installed


def test_cli_backends_agree_and_auto_uses_the_cached_export(tmp_path, monkeypatch, capsys):
    import cv2
    import numpy as np

    from mixcl_arch.dehaze import main
    monkeypatch.setenv('MIXCL_ONNX_CACHE', str(tmp_path / 'cache'))
    weights = make_checkpoint('MixCLDehazeNet', str(tmp_path))
    opt = tmp_path / 'cl.yml'
    # the net's two conditioning vectors: the primary one and the image embedding (zero without CLIP weights)
    opt.write_text(yaml.safe_dump({'network_g': NETS['MixCLDehazeNet'], 'conditioning': {'extra': ['image']}}))
    (tmp_path / 'in').mkdir()
    # 16-bit in, 16-bit out: the comparison is not hidden by 8-bit rounding
    img = np.random.default_rng(0).integers(0, 65535, (70, 53, 3)).astype(np.uint16)
    assert cv2.imwrite(str(tmp_path / 'in' / 'a.png'), img)
    outs = {}
    for backend in ('torch', 'onnxruntime', 'auto'):
        argv = ['-i', str(tmp_path / 'in'), '-o', str(tmp_path / backend), '--weights', weights, '--opt', str(opt),
                '--cond-fallback', 'none', '--device', 'cpu', '--tile', '48', '--tile-overlap', '16', '--backend',
                backend]
        assert main(argv) == 0
        outs[backend] = cv2.imread(str(tmp_path / backend / 'a.png'), cv2.IMREAD_UNCHANGED) / 65535.0
    assert np.abs(outs['onnxruntime'] - outs['torch']).max() < 1e-3
    assert np.array_equal(outs['auto'], outs['onnxruntime'])  # auto is ONNX Runtime on the CPU
    assert len(os.listdir(tmp_path / 'cache')) == 1  # exported by the first ONNX Runtime run, reused by auto
    assert capsys.readouterr().err.count('exported the network to ONNX') == 1
