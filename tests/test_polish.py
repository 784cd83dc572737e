"""Issue 15, items 5 and 7: BasicSR's quirks (scheduler on resume, ETA), ``make_haze_pairs --basicsr-layout`` and
the empty-split warning, fast ``--help`` of every script, ``demo.sh --help``, one line for the frozen parameters.

``--help`` speed is checked without a clock: a script answers ``--help`` before it imports torch, basicsr or this
package (the imports that take seconds), which a ``sys.modules`` check in a fresh interpreter shows.
"""
import csv
import glob
import json
import logging
import math
import os
import os.path as osp
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from _train_helpers import ROOT, load_script, make_pair_dataset, run_entry, tiny_train_opt, write_yaml
from mixcl_arch.utils.basicsr_fixes import apply_basicsr_fixes, load_training_state
from mixcl_arch.utils.options import OptionError

pytestmark = pytest.mark.usefixtures('one_thread')

SCRIPTS = sorted(glob.glob(osp.join(ROOT, 'scripts', '*.py')))
# what --help must not import: each takes from a fraction of a second (cv2) to many seconds (torch, basicsr)
HEAVY = ('torch', 'torchvision', 'basicsr', 'mixcl_arch', 'open_clip', 'cv2', 'skimage')


_script = load_script


# ------------------------------------------------------------------------------------------ item 5: scheduler
@pytest.fixture(scope='module')
def longer_resume(tmp_path_factory):
    """2 iterations with cosine periods [2], then ``--auto_resume`` with total_iter 4 and periods [4]."""
    work = tmp_path_factory.mktemp('longer')
    make_pair_dataset(str(work / 'datasets' / 'tiny'), n_train=4, n_test=1)
    opt = tiny_train_opt(os.path.join('datasets', 'tiny'), name='tiny_longer', total_iter=2, periods=2, save_freq=2,
                         val_freq=100)
    run_entry(os.path.join(ROOT, 'mixcl_arch', 'train.py'), ['-opt', write_yaml(opt, work / 'a.yml')], cwd=str(work))
    opt['train'].update(total_iter=4, scheduler=dict(opt['train']['scheduler'], periods=[4]))
    log = run_entry(os.path.join(ROOT, 'mixcl_arch', 'train.py'),
                    ['-opt', write_yaml(opt, work / 'b.yml'), '--auto_resume'], cwd=str(work))
    return dict(work=work, opt=opt, log=log)


def test_resume_with_a_longer_schedule_follows_the_option_files_periods(longer_resume):
    """BasicSR restored the saved periods [2] and crashed at iteration 4 (``list indices must be integers``)."""
    log, opt = longer_resume['log'], longer_resume['opt']
    assert 'iter: 2.' in log and 'iter:       4,' in log
    state = load_training_state(str(longer_resume['work'] / 'experiments' / 'tiny_longer' / 'training_states' /
                                    '4.state'))
    scheduler = state['schedulers'][0]
    assert scheduler['periods'] == [4] and scheduler['cumulative_period'] == [4] and scheduler['last_epoch'] == 3
    # iteration 3 runs at last_epoch 2 of the new 4-iteration cosine (the old one had ended at eta_min)
    lr, eta_min = opt['train']['optim_g']['lr'], opt['train']['scheduler']['eta_min']
    expected = eta_min + 0.5 * (lr - eta_min) * (1 + math.cos(math.pi * 2 / 4))
    assert f'iter:       3, lr:({expected:.3e},)' in log


def test_scheduler_state_keeps_the_position_and_takes_the_schedule_from_the_options():
    apply_basicsr_fixes()
    from basicsr.models.lr_scheduler import CosineAnnealingRestartLR, MultiStepRestartLR

    def optimizer():
        return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)

    def step(scheduler):
        scheduler.optimizer.step()  # torch warns about a scheduler step before any optimizer step
        scheduler.step()

    old = CosineAnnealingRestartLR(optimizer(), periods=[2], restart_weights=[1], eta_min=0.0)
    for _ in range(2):
        step(old)
    new = CosineAnnealingRestartLR(optimizer(), periods=[8], restart_weights=[1], eta_min=0.0)
    new.load_state_dict(old.state_dict())
    assert new.last_epoch == 2 and new.periods == [8] and new.cumulative_period == [8]
    step(new)
    assert new.get_last_lr()[0] == pytest.approx(0.5 * (1 + math.cos(math.pi * 3 / 8)))
    old_ms = MultiStepRestartLR(optimizer(), milestones=[2], gamma=0.5)
    step(old_ms)
    new_ms = MultiStepRestartLR(optimizer(), milestones=[5], gamma=0.1)
    new_ms.load_state_dict(old_ms.state_dict())
    assert new_ms.last_epoch == 1 and dict(new_ms.milestones) == {5: 1} and new_ms.gamma == 0.1


# ------------------------------------------------------------------------------------------ item 5: ETA
class _Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_eta_counts_the_iterations_left_and_is_never_negative(monkeypatch):
    """BasicSR printed ``eta: -1 day, 23:59:59`` at the last iteration once an iteration took a second or more."""
    apply_basicsr_fixes()
    import time

    from basicsr.utils.logger import MessageLogger
    clock = _Clock()
    monkeypatch.setattr(time, 'time', clock)
    opt = dict(name='eta_test', logger=dict(print_freq=1, use_tb_logger=False), train=dict(total_iter=10))
    logger = MessageLogger(opt, start_iter=0)
    messages = []
    logger.logger = type('Sink', (), {'info': lambda self, msg: messages.append(msg)})()
    for it in range(1, 11):  # 2 s per iteration; BasicSR resets the timer after iteration 1
        clock.now += 2.0
        if it == 1:
            logger.reset_start_time()
        logger({'epoch': 0, 'iter': it, 'lrs': [1e-3], 'time': 2.0, 'data_time': 0.1, 'l_pix': 0.5})
    etas = [msg.split('[eta: ')[1].split(',')[0] for msg in messages]
    assert etas[0] == '0:00:18' and etas[4] == '0:00:10' and etas[-1] == '0:00:00'
    assert not any(e.startswith('-') for e in etas)


# ------------------------------------------------------------------------------------------ item 5: BasicSR layout
def _photos(folder, n):
    os.makedirs(folder, exist_ok=True)
    for i in range(n):
        img = np.random.default_rng(i).integers(0, 256, (24, 32, 3), dtype=np.uint8)
        cv2.imwrite(osp.join(folder, f'p{i}.png'), img)


def _basicsr_pairs(split_dir, lq='hazy', gt='GT_paired'):
    from basicsr.data.paired_image_dataset import PairedImageDataset
    ds = PairedImageDataset(dict(dataroot_lq=osp.join(split_dir, lq), dataroot_gt=osp.join(split_dir, gt),
                                 filename_tmpl='{}', io_backend=dict(type='disk'), phase='val', scale=1))
    return [ds[i] for i in range(len(ds))]


def _read01(path):
    return torch.from_numpy(cv2.imread(path)[..., ::-1].astype(np.float32) / 255).permute(2, 0, 1)


def test_basicsr_layout_is_read_by_basicsrs_own_paired_image_dataset(tmp_path):
    mhp = _script('make_haze_pairs')
    _photos(tmp_path / 'in', 3)
    out = tmp_path / 'out'
    summary = mhp.main(['--input', str(tmp_path / 'in'), '--output', str(out), '--domain', 'outdoor',
                        '--versions', '2', '--test-names', 'p1', '--basicsr-layout'])
    with pytest.raises(AssertionError):  # the problem: several hazy versions per GT name
        _basicsr_pairs(str(out / 'train'), gt='GT')
    for split, n in (('train', 4), ('test', 2)):
        items = _basicsr_pairs(str(out / split))
        assert len(items) == n
        with open(out / split / 'meta.csv') as f:
            truth = {r['hazy']: r['gt'] for r in csv.DictReader(f)}
        assert sorted(osp.basename(it['lq_path']) for it in items) == sorted(truth)
        for it in items:
            gt_file = str(out / split / 'GT' / truth[osp.basename(it['lq_path'])])
            assert torch.equal(it['gt'], _read01(gt_file)) and torch.equal(it['lq'], _read01(it['lq_path']))
            assert os.stat(it['gt_path']).st_ino == os.stat(gt_file).st_ino  # a hard link, no copy
        assert summary['splits'][split]['basicsr_layout']['links'] == n
    # every file is recorded: a rerun with --overwrite replaces them instead of refusing foreign files
    mhp.main(['--input', str(tmp_path / 'in'), '--output', str(out), '--domain', 'outdoor', '--versions', '1',
              '--basicsr-layout', '--overwrite'])
    assert len(_basicsr_pairs(str(out / 'train'))) == 3 and not (out / 'test').exists()


def test_basicsr_layout_copies_where_hard_links_fail_and_refuses_foreign_files(tmp_path, monkeypatch):
    mhp = _script('make_haze_pairs')
    _photos(tmp_path / 'in', 2)

    def no_links(src, dst):
        raise OSError(1, 'Operation not permitted')

    monkeypatch.setattr(os, 'link', no_links)
    summary = mhp.main(['--input', str(tmp_path / 'in'), '--output', str(tmp_path / 'out'), '--domain', 'indoor',
                        '--versions', '2', '--basicsr-layout'])
    assert summary['splits']['train']['basicsr_layout'] == dict(
        dataroot_lq=str(tmp_path / 'out' / 'train' / 'hazy'), dataroot_gt=str(tmp_path / 'out' / 'train' / 'GT_paired'),
        links=0, copies=4)
    items = _basicsr_pairs(str(tmp_path / 'out' / 'train'))
    assert len(items) == 4 and all(not osp.samefile(it['gt_path'], it['lq_path']) for it in items)
    assert not glob.glob(str(tmp_path / 'out' / 'train' / 'GT_paired' / '.*.tmp'))
    (tmp_path / 'out' / 'train' / 'GT_paired' / 'mine.png').write_bytes(b'user file')
    with pytest.raises(FileExistsError, match='mine.png'):
        mhp.main(['--input', str(tmp_path / 'in'), '--output', str(tmp_path / 'out'), '--domain', 'indoor',
                  '--basicsr-layout', '--overwrite'])
    assert (tmp_path / 'out' / 'train' / 'GT_paired' / 'mine.png').read_bytes() == b'user file'


def test_basicsr_layout_of_an_existing_its_style_split(tmp_path):
    """--index-existing: ITS names (several hazy per GT, other names) get a GT_paired folder too."""
    mhp = _script('make_haze_pairs')
    split = tmp_path / 'ITS' / 'train'
    for rel, seed in (('GT/1.png', 1), ('GT/22.png', 2), ('hazy/1_1_0.9.png', 3), ('hazy/1_2_0.7.png', 4),
                      ('hazy/22_1_0.8.png', 5)):
        os.makedirs(osp.dirname(split / rel), exist_ok=True)
        cv2.imwrite(str(split / rel), np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8))
    summary = mhp.main(['--index-existing', str(split), '--domain', 'indoor', '--basicsr-layout'])
    assert summary['basicsr_layout']['links'] == 3
    got = {osp.basename(it['lq_path']): it['gt'] for it in _basicsr_pairs(str(split))}
    assert set(got) == {'1_1_0.9.png', '1_2_0.7.png', '22_1_0.8.png'}
    assert torch.equal(got['1_2_0.7.png'], _read01(str(split / 'GT' / '1.png')))
    assert torch.equal(got['22_1_0.8.png'], _read01(str(split / 'GT' / '22.png')))


def test_basicsr_layout_refuses_what_basicsr_cannot_pair_before_writing(tmp_path):
    mhp = _script('make_haze_pairs')
    _photos(tmp_path / 'in' / 'sub', 2)
    with pytest.raises(ValueError, match='subfolders'):
        mhp.main(['--input', str(tmp_path / 'in'), '--output', str(tmp_path / 'out'), '--domain', 'indoor',
                  '--basicsr-layout'])
    assert not (tmp_path / 'out').exists()
    with pytest.raises(SystemExit):
        mhp.parse_args(['--input', 'a', '--output', 'b', '--basicsr-layout', '--hazy-ext', '.jpg'])


# ------------------------------------------------------------------------------------------ item 7: empty split
def test_a_test_fraction_that_rounds_to_zero_warns_with_advice(tmp_path, capsys):
    mhp = _script('make_haze_pairs')
    _photos(tmp_path / 'in', 4)
    summary = mhp.main(['--input', str(tmp_path / 'in'), '--output', str(tmp_path / 'out'), '--domain', 'indoor',
                        '--versions', '1', '--test-frac', '0.1'])
    err = capsys.readouterr().err
    assert summary['splits']['test']['images'] == 0
    assert '--test-frac 0.1 of 4 images rounds to 0: the test split is empty' in err and '--test-count' in err
    mhp.main(['--input', str(tmp_path / 'in'), '--output', str(tmp_path / 'out2'), '--domain', 'indoor',
              '--versions', '1', '--test-count', '1'])
    assert 'Warning' not in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ item 7: --help
HELP_PROBE = '''
import json, runpy, sys
script, heavy = sys.argv[1], set(json.loads(sys.argv[2]))
sys.argv = [script, '--help']
try:
    runpy.run_path(script, run_name='__main__')
    code = None
except SystemExit as exit:
    code = exit.code
print(json.dumps({'exit': code, 'heavy': sorted({m.split('.')[0] for m in sys.modules} & heavy)}))
'''


@pytest.mark.parametrize('script', SCRIPTS, ids=osp.basename)
def test_help_answers_before_heavy_imports(script):
    proc = subprocess.run([sys.executable, '-c', HELP_PROBE, script, json.dumps(HEAVY)], capture_output=True,
                          text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert 'usage:' in proc.stdout and result['exit'] == 0
    assert result['heavy'] == [], f'{osp.basename(script)} --help imports {result["heavy"]}'


def test_choices_spelled_out_for_a_fast_help_agree_with_the_package():
    from mixcl_arch.utils.checkpoint import SAVE_FORMATS
    from mixcl_arch.data.haze_synthesis import DOMAIN_PRESETS
    assert _script('make_haze_pairs').DOMAINS == tuple(sorted(DOMAIN_PRESETS))
    convert = _script('convert_official_checkpoint')
    assert convert.ARCH_NAMES == tuple(sorted(convert.ARCHS)) and convert.FORMATS == tuple(SAVE_FORMATS)


@pytest.mark.parametrize('script', sorted(glob.glob(osp.join(ROOT, 'scripts', '*.sh'))), ids=osp.basename)
def test_shell_script_help_prints_its_header_and_does_nothing(script, tmp_path):
    """demo.sh used to pass --help to mkdir; install.sh ran the installation, run_tests.sh both."""
    with open(script) as f:
        header = f.read().splitlines()[1][2:]  # the first comment line, under the shebang
    for flag in ('--help', '-h'):
        proc = subprocess.run(['bash', script, flag], cwd=str(tmp_path), capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0 and proc.stdout.startswith(header + '\n') and not proc.stderr
        assert '[install]' not in proc.stdout and '[demo]' not in proc.stdout and not os.listdir(tmp_path)


def test_demo_sh_usage_and_bad_arguments(tmp_path):
    proc = subprocess.run(['bash', osp.join(ROOT, 'scripts', 'demo.sh'), '--help'], cwd=str(tmp_path),
                          capture_output=True, text=True, timeout=60)
    assert 'bash scripts/demo.sh [OUT]' in proc.stdout and 'DEMO_ITERS' in proc.stdout and 'mkdir' not in proc.stdout
    proc = subprocess.run(['bash', osp.join(ROOT, 'scripts', 'demo.sh'), '--bogus'], cwd=str(tmp_path),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and 'unknown option --bogus' in proc.stderr and not os.listdir(tmp_path)


# ------------------------------------------------------------------------------------------ item 7: frozen params
def _train_model(net, tmp_path):
    from basicsr.models import build_model
    opt = tiny_train_opt(str(tmp_path), net=net)
    opt.update(is_train=True, dist=False, rank=0, world_size=1, num_gpu=0, root_path=str(tmp_path),
               conditioning={'source': 'none'})  # no CLIP weights here; the frozen parameters do not depend on it
    opt['path'].update(experiments_root=str(tmp_path), models=str(tmp_path), training_states=str(tmp_path),
                       log=str(tmp_path), visualization=str(tmp_path))
    return build_model(opt)


@pytest.fixture
def basicsr_log():
    """The messages of BasicSR's logger (it does not propagate to the root logger, so caplog misses them)."""
    from basicsr.utils import get_root_logger
    logger = get_root_logger()
    records = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: records.append(record.getMessage())
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)  # BasicSR sets it only when it also logs to a file
    yield records
    logger.setLevel(level)
    logger.removeHandler(handler)


def test_frozen_text_fusion_parameters_are_one_line_saying_why(tmp_path, basicsr_log):
    net = dict(type='MixCLDehazeNet', embed_dims=[8, 16, 16, 16, 8], depths=[1] * 5, data_range='unit')
    model = _train_model(net, tmp_path)
    lines = basicsr_log
    assert 'Model [MixCLDehazeModel] is created.' in lines  # the handler sees BasicSR's messages
    assert not [m for m in lines if 'will not be optimized' in m]
    frozen = [m for m in lines if 'Frozen, not optimized' in m]
    assert len(frozen) == 1
    assert 'Frozen, not optimized: 9 parameter tensors' in frozen[0] and 'text_emb' in frozen[0]
    assert 'k1.weight' in frozen[0] and 'postProj_t.bias' in frozen[0] and 'official weights' in frozen[0]
    # the optimizer holds exactly the trainable parameters
    opt_params = {id(p) for group in model.optimizer_g.param_groups for p in group['params']}
    assert opt_params == {id(p) for p in model.net_g.parameters() if p.requires_grad}


def test_a_net_without_frozen_parameters_logs_no_frozen_line(tmp_path, basicsr_log):
    _train_model(None, tmp_path)
    assert 'Model [MixCLDehazeModel] is created.' in basicsr_log
    assert not [m for m in basicsr_log if 'Frozen' in m or 'not be optimized' in m]


def test_scheduler_check_is_an_option_error_in_process(tmp_path):
    apply_basicsr_fixes()
    from basicsr.models import build_model
    opt = tiny_train_opt(str(tmp_path), total_iter=10, periods=4)
    opt.update(is_train=True, dist=False, rank=0, world_size=1, num_gpu=0, root_path=str(tmp_path))
    with pytest.raises(OptionError, match=r'periods: \[4\] sum to 4.*total_iter is 10'):
        build_model(opt)


# ------------------------------------------------------------------------------------------ item 7: entry points
# the console scripts as pip writes them: import the function named in setup.py and exit with what it returns
CONSOLE_WRAPPER = 'import sys; from {module} import {func}; sys.argv[0] = {name!r}; sys.exit({func}())'
ENTRY_HEAVY = ('torch', 'torchvision', 'basicsr', 'cv2', 'numpy', 'open_clip', 'skimage')


def console_scripts():
    """``name -> (module, function)`` of the console scripts declared in setup.py."""
    import re
    with open(osp.join(ROOT, 'setup.py')) as f:
        return {name: (module, func) for name, module, func in re.findall(r"'([\w-]+)=([\w.]+):(\w+)'", f.read())}


def entry_commands():
    """Every documented way to start the three commands, as argument lists for the interpreter."""
    commands = {f'python -m mixcl_arch.{kind}': ['-m', f'mixcl_arch.{kind}'] for kind in ('dehaze', 'train', 'test')}
    commands.update({f'python mixcl_arch/{kind}.py': [osp.join(ROOT, 'mixcl_arch', f'{kind}.py')]
                     for kind in ('train', 'test')})
    for name, (module, func) in console_scripts().items():
        commands[name] = ['-c', CONSOLE_WRAPPER.format(module=module, func=func, name=name)]
    return commands


def run_importtime(command, args, cwd):
    """Run ``python -X importtime <command> <args>``; returns (process, top-level names of every import).

    ``PYTHONPATH``: the checkout, for an editable install made before ``mixcl_arch_cli`` existed.
    """
    proc = subprocess.run([sys.executable, '-X', 'importtime'] + command + args, capture_output=True, text=True,
                          timeout=120, cwd=cwd, env=dict(os.environ, COLUMNS='100', PYTHONPATH=ROOT))
    imported = {line.rsplit('|', 1)[1].strip().split('.')[0] for line in proc.stderr.splitlines()
                if line.startswith('import time:') and line.count('|') == 2}
    return proc, imported


def test_console_scripts_are_the_three_light_fronts():
    assert console_scripts() == {'mixcl-dehaze': ('mixcl_arch_cli', 'cli_dehaze'),
                                 'mixcl-train': ('mixcl_arch_cli', 'cli_train'),
                                 'mixcl-test': ('mixcl_arch_cli', 'cli_test')}


@pytest.mark.parametrize('name', sorted(entry_commands()))
def test_entry_point_help_and_argument_errors_before_heavy_imports(name, tmp_path):
    """``--help`` exits 0 with the usage, a missing required option exits 2, and neither imports torch & co."""
    command = entry_commands()[name]
    proc, imported = run_importtime(command, ['--help'], str(tmp_path))
    assert proc.returncode == 0 and proc.stdout.startswith('usage: '), proc.stderr[-3000:]
    assert 'mixcl_arch' in imported or 'mixcl_arch_cli' in imported  # the probe sees this project's imports
    assert not imported & set(ENTRY_HEAVY), f'{name} --help imports {sorted(imported & set(ENTRY_HEAVY))}'
    proc, imported = run_importtime(command, [], str(tmp_path))
    assert proc.returncode == 2 and 'error: the following arguments are required' in proc.stderr
    assert not imported & set(ENTRY_HEAVY)
    assert not os.listdir(tmp_path)


def test_train_and_test_help_is_basicsrs_own(tmp_path):
    """The fronts' copy of BasicSR's parser prints BasicSR's help and refuses what BasicSR refuses."""
    env = dict(os.environ, COLUMNS='100', MIXCL_ARCH_NO_BASICSR_HOOK='1')
    theirs_dir = tmp_path / 'basicsr_side'
    theirs_dir.mkdir()
    for kind in ('train', 'test'):
        # BasicSR's parse_options, unpatched, in a file of the same name (the usage line starts with it): the
        # torchvision alias (compat.py is self-contained), then basicsr itself
        (theirs_dir / f'{kind}.py').write_text(
            f'import runpy\nrunpy.run_path({osp.join(ROOT, "mixcl_arch", "compat.py")!r})\n'
            'from basicsr.utils.options import parse_options\nparse_options(".")\n')
        bad = [['-opt', 'x.yml', '--launcher', 'mpi', '--force_yml']] if kind == 'train' else []  # one code path
        for args in [['--help']] + bad:
            theirs, ours = (subprocess.run([sys.executable, script, *args], capture_output=True, text=True,
                                           timeout=120, cwd=str(tmp_path), env=env)
                            for script in (str(theirs_dir / f'{kind}.py'), osp.join(ROOT, 'mixcl_arch', f'{kind}.py')))
            assert ours.returncode == theirs.returncode and ours.returncode in (0, 2), (args, theirs.stderr[-2000:])
            assert (ours.stdout, ours.stderr) == (theirs.stdout, theirs.stderr), args


def test_check_basicsr_args_takes_the_launchers_spelling_of_local_rank():
    import mixcl_arch_cli
    args = mixcl_arch_cli.check_basicsr_args(['-opt', 'x.yml', '--launcher', 'pytorch', '--local-rank=1'])
    assert (args.opt, args.launcher, args.local_rank, args.auto_resume) == ('x.yml', 'pytorch', 1, False)
    assert mixcl_arch_cli.check_basicsr_args(['-opt', 'x.yml', '--local_rank', '3']).local_rank == 3


def test_registration_is_deferred_only_for_the_command_line_fronts(tmp_path):
    """``import mixcl_arch`` registers; ``python -m`` of another module (``basicsr.train``'s path) does too."""
    probe = ('import sys; import mixcl_arch; from basicsr.utils.registry import ARCH_REGISTRY, MODEL_REGISTRY; '
             'print("MixCLDehazeNet" in ARCH_REGISTRY, "MixCLDehazeModel" in MODEL_REGISTRY)')
    (tmp_path / 'probe_mod.py').write_text(probe)
    for command in (['-c', probe], ['-m', 'probe_mod']):
        proc = subprocess.run([sys.executable] + command, capture_output=True, text=True, timeout=120,
                              cwd=str(tmp_path), env=dict(os.environ, PYTHONPATH=f'{tmp_path}{os.pathsep}{ROOT}'))
        assert proc.returncode == 0 and proc.stdout.split() == ['True', 'True'], proc.stderr[-3000:]


# ------------------------------------------------------------------------------------------ issue 13: DehazeNet tiles
def test_dehazenet_tile_overlap_defaults_to_the_seamless_one_and_reports_a_smaller_one(recwarn):
    """The overlap was silently raised from the default 32 to 44: 44 is now the default, a smaller one warns."""
    from mixcl_arch.baselines.dehazenet import SEAMLESS_OVERLAP, DehazeNetRecoveryParams
    assert DehazeNetRecoveryParams(tile=128).tile_overlap == SEAMLESS_OVERLAP == 44
    assert DehazeNetRecoveryParams(tile=None, tile_overlap=8).tile_overlap == 8  # no tiles: nothing to report
    assert not [w for w in recwarn if 'tile_overlap' in str(w.message)]
    with pytest.warns(UserWarning, match=r'^dehazenet.tile_overlap: 16 px is raised to 44 px, the smallest overlap'):
        DehazeNetRecoveryParams(tile=64, tile_overlap=16)
