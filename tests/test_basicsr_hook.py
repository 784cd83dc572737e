"""BasicSR's own commands with the plugin installed (issue 15 item 1): the lazy hook of ``mixcl_arch_hook.pth``.

Two fresh venvs are built as CI would: ``python -m venv --system-site-packages --without-pip`` (torch and basicsr
1.4.2 come from the system, and so do pip and setuptools: a venv's bundled setuptools 65 cannot build with
wheel >= 0.46), then ``pip install --no-deps --no-build-isolation`` of the checkout, editable in one and from a copy
(a real wheel build) in the other. Training runs on the demo data of ``scripts/make_demo_data.py`` (tiny images) with
the demo option file itself, shortened by ``--force_yml``. The BasicSR source tree is a copy of the installed 1.4.2
package: the ``basicsr/`` folder of the PyPI sdist is the same files (only ``version.py``'s build stamp differs).
"""
import ast
import glob
import importlib.util
import json
import os
import os.path as osp
import shutil
import subprocess
import sys
import warnings

import pytest
import yaml

import mixcl_arch_hook
from _train_helpers import ROOT, make_pair_dataset, run_entry, tiny_train_opt, validation_values, write_yaml
from mixcl_arch.basicsr_hook import is_basicsr_entry_point

DEMO_OPT = osp.join(ROOT, 'options', 'train', 'train_MixCLDehazeNet_T_demo.yml')
NAME = 'MixCLDehazeNet_T_demo'
SHORT = ['train:total_iter=2', 'train:scheduler:periods=[4]', 'val:val_freq=100', 'logger:save_checkpoint_freq=2',
         'logger:print_freq=1']
PROBE = ('import json, sys; print(json.dumps({"finders": [type(f).__name__ for f in sys.meta_path], '
         '"modules": sorted(m for m in ("mixcl_arch_hook", "mixcl_arch", "basicsr", "torch") if m in sys.modules)}))')


def make_venv(path, install_args):
    """A venv reusing the system's packages, with this project installed by ``pip install <install_args>``."""
    subprocess.run([sys.executable, '-m', 'venv', '--system-site-packages', '--without-pip', str(path)], check=True)
    python = str(path / 'bin' / 'python')
    proc = subprocess.run([python, '-m', 'pip', 'install', '-q', '--no-deps', '--no-build-isolation'] + install_args,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return python


def probe(python, **env):
    """What a bare interpreter of ``python`` has on sys.meta_path and in sys.modules (``python -c``, cwd = /)."""
    out = subprocess.run([python, '-c', PROBE], cwd='/', env=dict(os.environ, **env), capture_output=True, text=True,
                         check=True).stdout
    return json.loads(out)


def dataset_option_dumps(log):
    """The ``datasets:[...]`` part of the option dump BasicSR logs after parse_options."""
    return log[log.index('  datasets:['):log.index('  network_g:[')]


@pytest.fixture(scope='module')
def editable_venv(tmp_path_factory):
    return make_venv(tmp_path_factory.mktemp('venv_editable'), ['-e', ROOT])


@pytest.fixture(scope='module')
def wheel_venv(tmp_path_factory):
    src = tmp_path_factory.mktemp('src') / 'mixcl_arch_src'
    skip = shutil.ignore_patterns('.git', 'build', 'dist', '*.egg-info', '__pycache__', 'tests', 'experiments',
                                  'results', 'tb_logger', 'datasets', 'demo_output', '*.whl')
    shutil.copytree(ROOT, src, ignore=skip)
    return make_venv(tmp_path_factory.mktemp('venv_wheel'), [str(src)])


@pytest.fixture(scope='module')
def demo_data(tmp_path_factory):
    """``data/{train,test}`` of the demo (long side 96 >= the YAML's gt_size 64), one hazy version per photo."""
    spec = importlib.util.spec_from_file_location('make_demo_data', osp.join(ROOT, 'scripts', 'make_demo_data.py'))
    make_demo_data = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_demo_data)
    out = tmp_path_factory.mktemp('demo_data') / 'data'
    make_demo_data.main(['--out', str(out), '--long-side', '96', '--versions', '1', '--test-versions', '1'])
    return out


def demo_test_opt(name):
    """A test option file for the demo training's ``net_g_latest.pth`` on the demo's validation split."""
    with open(DEMO_OPT) as f:
        train = yaml.safe_load(f)
    return dict(name=name, model_type=train['model_type'], num_gpu=0, clip=train['clip'],
                conditioning=train['conditioning'],
                datasets=dict(test_1=train['datasets']['val']), network_g=train['network_g'],
                path=dict(pretrain_network_g=f'experiments/{NAME}/models/net_g_latest.pth', strict_load_g=True),
                val=dict(save_img=True, metrics=train['val']['metrics']))


def work_dir(tmp_path_factory, demo_data, name):
    work = tmp_path_factory.mktemp(name)
    os.symlink(demo_data, work / 'data')  # the demo YAML's paths are relative to the working directory
    return work


@pytest.fixture(scope='module')
def python_m_runs(editable_venv, demo_data, tmp_path_factory):
    """``python -m basicsr.train`` (2 iterations), its ``--auto_resume`` to 3, ``python -m basicsr.test``."""
    work = work_dir(tmp_path_factory, demo_data, 'python_m')
    py = [editable_venv, '-m']
    first = run_entry('basicsr.train', ['-opt', DEMO_OPT, '--force_yml'] + SHORT, cwd=str(work), launcher=py)
    resumed = run_entry('basicsr.train', ['-opt', DEMO_OPT, '--auto_resume', '--force_yml'] + SHORT
                        + ['train:total_iter=3'], cwd=str(work), launcher=py)
    test_yml = write_yaml(demo_test_opt(f'{NAME}_test'), work / 'test_demo.yml')
    tested = run_entry('basicsr.test', ['-opt', test_yml], cwd=str(work), launcher=py)
    return dict(work=work, first=first, resumed=resumed, tested=tested)


def test_pth_hook_is_installed_lazy_and_opt_out(editable_venv, wheel_venv):
    for python in (editable_venv, wheel_venv):
        site = probe(python)
        # python -c: the hook is on sys.meta_path, and nothing heavy was imported for it
        assert 'BasicsrFinder' in site['finders'] and site['modules'] == ['mixcl_arch_hook'], (python, site)
        off = probe(python, MIXCL_ARCH_NO_BASICSR_HOOK='1')
        assert 'BasicsrFinder' not in off['finders'] and 'torch' not in off['modules'], (python, off)
    # the wheel's plugin is the installed copy, not this checkout
    origin = subprocess.run([wheel_venv, '-c', 'import importlib.util; print(importlib.util.find_spec("mixcl_arch")'
                             '.origin)'], cwd='/', capture_output=True, text=True, check=True).stdout.strip()
    assert origin.startswith(osp.dirname(osp.dirname(wheel_venv))) and not origin.startswith(ROOT)


def test_python_m_basicsr_train_writes_under_cwd_with_clip(python_m_runs):
    work, log = python_m_runs['work'], python_m_runs['first']
    exp = work / 'experiments' / NAME
    assert f'experiments_root: {exp}' in log  # not site-packages, where BasicSR's __main__ puts it
    assert {'net_g_2.pth', 'net_g_latest.pth'} <= set(os.listdir(exp / 'models'))
    assert os.listdir(exp / 'training_states') == ['2.state']
    # the YAML's top-level conditioning (source oracle) reached the model: it trained without CLIP weights, which
    # the default source clip needs; no dataset carries clip or conditioning options
    assert 'conditioning:[' in log and 'clip:[' not in dataset_option_dumps(log)
    assert 'cond_' not in dataset_option_dumps(log)
    assert len(validation_values(log, 'psnr')) == 1  # the plugin's metric, validated once at the end


def test_python_m_basicsr_train_auto_resume_on_cpu(python_m_runs):
    work, log = python_m_runs['work'], python_m_runs['resumed']
    # BasicSR's own load_resume_state would call torch.cuda.current_device() and fail without CUDA
    assert 'Resuming training from epoch: 1, iter: 2.' in log and 'iter:       3,' in log
    assert f'resume_state: {work / "experiments" / NAME / "training_states" / "2.state"}' in log


def test_python_m_basicsr_test_writes_results_under_cwd(python_m_runs):
    work, log = python_m_runs['work'], python_m_runs['tested']
    results = work / 'results' / f'{NAME}_test'
    assert f'results_root: {results}' in log
    assert len(validation_values(log, 'psnr')) == 1 and any(f.startswith('test_') for f in os.listdir(results))
    assert os.listdir(results / 'visualization' / 'demo_test')


@pytest.fixture(scope='module')
def basicsr_tree(tmp_path_factory):
    """A BasicSR "checkout": the installed 1.4.2 package copied to TREE/basicsr, with a version stamp of its own."""
    import basicsr
    tree = tmp_path_factory.mktemp('BasicSR')
    shutil.copytree(osp.dirname(basicsr.__file__), tree / 'basicsr', ignore=shutil.ignore_patterns('__pycache__'))
    # a version stamp of its own (as a checkout's generated version.py has) shows which basicsr the run imported
    (tree / 'basicsr' / 'version.py').write_text("__version__ = '1.4.2+tree'\n__gitsha__ = 'tree'\n")
    return tree


def test_basicsr_source_tree_train_py_and_console_scripts(wheel_venv, basicsr_tree, demo_data, tmp_path_factory):
    tree = basicsr_tree
    work = work_dir(tmp_path_factory, demo_data, 'source_tree')
    # BasicSR's documented way: PYTHONPATH=<checkout> python basicsr/train.py -opt ...
    log = run_entry(str(tree / 'basicsr' / 'train.py'), ['-opt', DEMO_OPT, '--force_yml'] + SHORT,
                    cwd=str(work), launcher=['env', f'PYTHONPATH={tree}', wheel_venv])
    assert 'BasicSR: 1.4.2+tree' in log  # the checkout's package was imported (and hooked)
    assert f'experiments_root: {work / "experiments" / NAME}' in log and not (tree / 'experiments').exists()
    assert osp.isfile(work / 'experiments' / NAME / 'models' / 'net_g_latest.pth')

    bindir = osp.dirname(wheel_venv)
    scripts = subprocess.run([wheel_venv, '-c', 'from importlib.metadata import entry_points; print({e.name: e.value '
                              'for e in entry_points(group="console_scripts") if e.name.startswith("mixcl-")})'],
                             cwd='/', capture_output=True, text=True, check=True).stdout
    fronts = {name: f'mixcl_arch_cli:cli_{name[6:]}' for name in ('mixcl-dehaze', 'mixcl-train', 'mixcl-test')}
    assert ast.literal_eval(scripts) == fronts
    for name in ('mixcl-dehaze', 'mixcl-train', 'mixcl-test'):  # installed light fronts: --help imports no torch
        proc = subprocess.run([wheel_venv, '-X', 'importtime', osp.join(bindir, name), '--help'], cwd='/',
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0 and proc.stdout.startswith('usage: ') and '| torch' not in proc.stderr, name
        assert '| mixcl_arch_cli' in proc.stderr  # the installed module (py_modules), not this checkout
    # mixcl-test registers the plugin, whose first sub-package imports basicsr: the hook's other path
    test_yml = write_yaml(demo_test_opt('console_test'), work / 'test.yml')
    log = run_entry(osp.join(bindir, 'mixcl-test'), ['-opt', test_yml], cwd=str(work), launcher=['env'])
    assert len(validation_values(log, 'psnr')) == 1 and (work / 'results' / 'console_test').is_dir()


@pytest.mark.parametrize('version, plugged', [('1.2.0+fork', False), ('1.4.2', True)])
def test_hooked_loader_plugs_only_basicsr_1_4(version, plugged, tmp_path, monkeypatch):
    """Other basicsr versions (e.g. the forks vendored by other restoration repositories) get a warning only."""
    (tmp_path / 'basicsr').mkdir()
    (tmp_path / 'basicsr' / '__init__.py').write_text(f'__version__ = {version!r}\n')
    spec = importlib.util.spec_from_file_location('basicsr', tmp_path / 'basicsr' / '__init__.py')
    original = spec.loader
    spec.loader = mixcl_arch_hook._PluginLoader(original, osp.join(ROOT, 'mixcl_arch'))
    patched = []
    monkeypatch.setattr('mixcl_arch.basicsr_hook.patch_basicsr', lambda: patched.append(version))
    module = importlib.util.module_from_spec(spec)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        spec.loader.exec_module(module)
    assert module.__version__ == version and module.__loader__ is original  # nothing of the hook stays attached
    assert patched == ([version] if plugged else [])
    messages = [str(w.message) for w in caught if 'mixcl_arch' in str(w.message)]
    expected = (f"mixcl_arch: basicsr '{version}' ({module.__file__}) is not BasicSR 1.4.x; the plugin is not loaded "
                'into it (MIXCL_ARCH_NO_BASICSR_HOOK=1 turns the hook off).')
    assert messages == ([] if plugged else [expected])


@pytest.mark.parametrize('filename, root, expected', [
    ('/site/basicsr/train.py', '/site', True),
    ('/src/BasicSR/basicsr/test.py', '/src/BasicSR', True),
    ('/site/basicsr/train.py', '/work/HAT', False),  # HAT / Real-ESRGAN call train_pipeline with their own root
    ('/work/HAT/hat/train.py', '/work/HAT', False),
    ('/site/basicsr/utils/options.py', '/site/basicsr', False),
])
def test_entry_point_detection(filename, root, expected):
    assert is_basicsr_entry_point(filename, root) is expected


@pytest.mark.skipif(not os.path.exists(osp.join(osp.dirname(sys.executable), 'torchrun')),
                    reason='torchrun is part of torch; not found next to python')
def test_torchrun_basicsr_source_tree_train_py_with_pytorch_launcher(wheel_venv, basicsr_tree, tmp_path):
    """``torchrun --nproc_per_node=2 basicsr/train.py ... --launcher pytorch`` from a BasicSR checkout, on CPU."""
    make_pair_dataset(str(tmp_path / 'datasets' / 'tiny'), n_train=4, n_test=1)
    opt = tiny_train_opt(osp.join('datasets', 'tiny'), name='tiny_tree_ddp', total_iter=2, periods=2, save_freq=2,
                         val_freq=2)
    yml = write_yaml(opt, tmp_path / 'ddp.yml')
    # torchrun of the venv's interpreter (python -m torch.distributed.run); --standalone: a local rendezvous on a
    # port it picks itself; --log-dir + --redirects 3: each rank's output in a file of its own
    # (torchrun's own exit status 0, checked by run_entry, means that both ranks exited with 0)
    run_entry(str(basicsr_tree / 'basicsr' / 'train.py'), ['-opt', yml, '--launcher', 'pytorch'], cwd=str(tmp_path),
              timeout=300, launcher=['env', f'PYTHONPATH={basicsr_tree}', wheel_venv, '-m', 'torch.distributed.run',
                                     '--standalone', '--nproc_per_node=2', '--log-dir', str(tmp_path / 'ranks'),
                                     '--redirects', '3'])
    outputs = {}  # rank -> its stdout and stderr (BasicSR's logger writes to stderr)
    for path in sorted(glob.glob(str(tmp_path / 'ranks' / '**' / 'std*.log'), recursive=True)):
        with open(path) as f:
            outputs[osp.basename(osp.dirname(path))] = outputs.get(osp.basename(osp.dirname(path)), '') + f.read()
    assert sorted(outputs) == ['0', '1']  # two workers (only rank 0 logs)
    rank0 = outputs['0']
    assert 'BasicSR: 1.4.2+tree' in rank0 and 'World size (gpu number): 2' in rank0
    assert 'End of training.' in rank0 and validation_values(rank0, 'psnr')  # rank 0 trained and validated
    exp = tmp_path / 'experiments' / 'tiny_tree_ddp'  # under the working directory, not the checkout
    assert f'experiments_root: {exp}' in rank0 and not (basicsr_tree / 'experiments').exists()
    assert {'net_g_2.pth', 'net_g_latest.pth'} <= set(os.listdir(exp / 'models'))
