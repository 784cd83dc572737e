"""Outputs of the ORIGINAL MixDehazeNet / MixCLDehazeNet code, reproduced through the project's loaders.

``tests/data/reference_outputs.npz`` holds a seeded input and what the upstream ``models/MixDehazeNet.py`` of each
repository computed for it (T preset, eval mode, non-trivial BatchNorm statistics); ``scripts/
make_reference_fixture.py`` documents and reproduces it. The weights are a deterministic function of the parameter
names (too large to store); here they are rebuilt by that script's function, written as an official checkpoint and
loaded back through the project's checkpoint code.
"""
import importlib.util
import json
import os.path as osp

import numpy as np
import pytest
import torch

from mixcl_arch.archs.mixdehazenet_arch import MixCLDehazeNet, MixDehazeNet
from mixcl_arch.restorers import build_net_from_checkpoint
from mixcl_arch.utils.checkpoint import load_network_weights

ROOT = osp.abspath(osp.join(osp.dirname(__file__), osp.pardir))
FIXTURE = osp.join(ROOT, 'tests', 'data', 'reference_outputs.npz')
_spec = importlib.util.spec_from_file_location('make_reference_fixture',
                                               osp.join(ROOT, 'scripts', 'make_reference_fixture.py'))
fixture_script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fixture_script)

ARCHS = {'mixdehazenet_t': MixDehazeNet, 'mixcldehazenet_t': MixCLDehazeNet}
pytestmark = pytest.mark.usefixtures('one_thread')


@pytest.fixture(scope='module')
def reference():
    with np.load(FIXTURE, allow_pickle=False) as data:
        return {k: (json.loads(str(data[k])) if k == 'provenance' else torch.from_numpy(data[k])) for k in data.files}


def official_checkpoint(arch, path):
    """The deterministic weights in the upstream training code's format (DataParallel prefix, extras)."""
    net = fixture_script.deterministic_weights(ARCHS[arch]('T'))
    state = {'module.' + k: v for k, v in net.state_dict().items()}
    torch.save({'state_dict': state, 'optimizer': {'state': {}, 'param_groups': []}, 'epoch': 1, 'best_psnr': 0.},
               path)
    return str(path)


def run(net, arch, x, reference):
    with torch.no_grad():
        return net(x) if arch == 'mixdehazenet_t' else net(x, reference['text'])


def test_fixture_inputs_and_provenance(reference):
    image, text = fixture_script.fixture_inputs()
    assert torch.equal(reference['image'], image) and torch.equal(reference['text'], text)
    assert reference['image'].shape == (1, 3, 37, 45) and reference['text'].shape == (1, 1, 512)
    prov = reference['provenance']
    assert prov['mixdehazenet_t']['repo'].endswith('AmeryXiong/MixDehazeNet')
    assert prov['mixcldehazenet_t']['repo'].endswith('DanielHo-BS/MixCLDehazeNet')
    assert all(len(prov[k]['commit']) == 40 for k in ARCHS)


@pytest.mark.parametrize('arch', list(ARCHS))
def test_official_checkpoint_reproduces_original_outputs(tmp_path, reference, arch):
    """Inferred from the checkpoint (the CLI's path, data_range 'unit') and loaded into an explicit signed net."""
    ckpt = official_checkpoint(arch, tmp_path / 'official.pth')
    x_signed = fixture_script.to_signed(reference['image'])
    expected = reference[arch]

    inferred, net_opt = build_net_from_checkpoint(ckpt)
    assert net_opt['type'] == ARCHS[arch].__name__ and net_opt['depths'] == [1, 1, 2, 1, 1]
    unit_out = run(inferred, arch, reference['image'].float() / 255, reference)
    assert (unit_out * 2 - 1 - expected).abs().max().item() <= 1e-5

    signed = load_network_weights(ARCHS[arch]('T', data_range='signed'), ckpt, param_key='state_dict').eval()
    diff = (run(signed, arch, x_signed, reference) - expected).abs().max().item()
    assert diff <= 1e-5, f'{arch}: max |project - original| = {diff:.2e}'


@pytest.mark.parametrize('arch', list(ARCHS))
def test_fixture_depends_on_batchnorm_statistics_and_weights(reference, arch):
    """The comparison above can fail: trivial BN statistics or another seed give clearly different outputs."""
    x = fixture_script.to_signed(reference['image'])
    trivial_bn = fixture_script.deterministic_weights(ARCHS[arch]('T')).eval()
    for m in trivial_bn.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
    other_seed = fixture_script.deterministic_weights(ARCHS[arch]('T'), seed=1).eval()
    for net in (trivial_bn, other_seed):
        assert (run(net, arch, x, reference) - reference[arch]).abs().max().item() > 1e-2


@pytest.mark.parametrize('arch', list(ARCHS))
def test_batchnorm_folding_keeps_original_outputs(tmp_path, reference, arch):
    """``fuse_for_inference`` against the original code's output, fp32 tolerance (a few hundred ulps of |y|)."""
    ckpt = official_checkpoint(arch, tmp_path / 'official.pth')
    net = load_network_weights(ARCHS[arch]('T', data_range='signed'), ckpt, param_key='state_dict').eval()
    net.fuse_for_inference()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) and n.endswith('norm1') for n, m in net.named_modules())
    out = run(net, arch, fixture_script.to_signed(reference['image']), reference)
    expected = reference[arch]
    tol = 64 * torch.finfo(torch.float32).eps * expected.abs().max().item()
    diff = (out - expected).abs().max().item()
    assert diff <= tol, f'{arch}: folded BN deviates by {diff:.2e} > {tol:.2e}'
