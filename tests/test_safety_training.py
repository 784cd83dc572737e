"""Issue 12, training side: safe option YAMLs, options checked at start, one run per experiment folder, auto-resume
past damaged states, stale temporary files removed.

The entry points run as subprocesses in a temp cwd (tiny data and YAMLs from tests/_train_helpers.py); the
option checks also run in-process through BasicSR's patched ``parse_options``, the boundary every entry point uses.
"""
import ast
import copy
import glob
import os
import re
import signal
import subprocess
import sys

import pytest
import torch
import yaml

from mixcl_arch.utils.basicsr_fixes import (RunFolderInUseError, apply_basicsr_fixes, find_resume_state,
                                            load_resume_state, load_training_state, lock_run_folder, release_run_locks)
from mixcl_arch.utils.file_io import atomic_open, atomic_torch_save, remove_stale_temp_files
from mixcl_arch.utils.options import OptionError, OrderedDumper, check_options, load_yaml_file, safe_load
from _train_helpers import ROOT, TEST, TRAIN, make_pair_dataset, run_entry, tiny_train_opt, write_yaml

PAYLOAD = 'name: !!python/object/apply:os.system ["touch {marker}"]\n'


def run_failing(script, args, cwd):
    """Run an entry point that must fail; returns its combined output."""
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore')
    proc = subprocess.run([sys.executable, script] + list(args), cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode != 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def set_key(opt, dotted, value):
    *parents, last = dotted.split('.')
    for key in parents:
        opt = opt[key]
    opt[last] = value


# ------------------------------------------------------------------------------------------------------ 1. safe YAML
@pytest.mark.parametrize('script', [TRAIN, TEST], ids=['train', 'test'])
def test_crafted_yaml_tag_runs_no_code_through_the_entry_points(script, tmp_path):
    marker = tmp_path / 'MARKER'
    crafted = tmp_path / 'crafted.yml'
    crafted.write_text(PAYLOAD.format(marker=marker) + 'num_gpu: 0\n')
    # the payload is live: YAML's full loader (what BasicSR 1.4.2's ordered_yaml builds on) runs it
    yaml.load(crafted.read_text(), Loader=yaml.Loader)
    assert marker.exists()
    marker.unlink()
    out = run_failing(script, ['-opt', str(crafted)], cwd=str(tmp_path))
    assert not marker.exists()
    assert 'crafted.yml' in out and 'python/object/apply:os.system' in out and 'is not allowed' in out
    assert 'Traceback' not in out  # one clear line, not a stack dump
    assert not (tmp_path / 'experiments').exists() and not (tmp_path / 'results').exists()


def test_every_yaml_load_in_the_project_goes_through_the_safe_loader():
    """No module but mixcl_arch/utils/options.py calls a yaml loading function (or imports yaml at all)."""
    sources = glob.glob(os.path.join(ROOT, 'mixcl_arch', '**', '*.py'), recursive=True) + \
        glob.glob(os.path.join(ROOT, 'scripts', '*.py'))
    offenders = []
    for path in sources:
        if path.endswith(os.path.join('utils', 'options.py')):
            continue
        for node in ast.walk(ast.parse(open(path, encoding='utf-8').read())):
            names = [a.name for a in node.names] if isinstance(node, (ast.Import, ast.ImportFrom)) else []
            if 'yaml' in names or (isinstance(node, ast.ImportFrom) and node.module == 'yaml'):
                offenders.append(f'{os.path.relpath(path, ROOT)}:{node.lineno}')
    assert offenders == []


def test_safe_loader_keeps_basicsr_behaviour_and_rejects_duplicates():
    opt = safe_load('b: 1\na: !!float 5e3\nc: ~\nd: 2e-4\ne: "2e-4"\nf: [1, 2.5]\ng: 1.0e-5\n')
    assert list(opt) == ['b', 'a', 'c', 'd', 'e', 'f', 'g'] and type(opt).__name__ == 'OrderedDict'
    assert opt['a'] == 5000.0 and opt['c'] is None and opt['d'] == 2e-4 and opt['e'] == '2e-4' and opt['g'] == 1e-5
    assert yaml.safe_load('d: 2e-4')['d'] == '2e-4'  # PyYAML's own loaders are left as they are
    with pytest.raises(OptionError, match="found the key 'a' twice"):
        safe_load('a: 1\nb: 2\na: 3\n')


@pytest.mark.parametrize('path', sorted(glob.glob(os.path.join(ROOT, 'options', '*', '*.yml'))),
                         ids=lambda p: os.path.relpath(p, ROOT))
def test_shipped_option_files_load_as_basicsr_and_pass_the_checks(path):
    opt = load_yaml_file(path)
    with open(path) as f:
        reference = yaml.load(f, Loader=yaml.Loader)  # the shipped files are trusted: compare with YAML's loader
    assert opt == reference and list(opt) == list(reference)
    checked = check_options(dict(opt, is_train=os.sep + 'train' + os.sep in path))
    assert checked.name == opt['name'] and checked.datasets


# --------------------------------------------------------------------------------------------- 2. options checked
@pytest.fixture
def parse(tmp_path, monkeypatch):
    """BasicSR's patched parse_options on a YAML written from a dict, as the entry points call it (argv)."""
    apply_basicsr_fixes()
    import basicsr.utils.options as basicsr_options

    def run(opt, is_train=True, extra=()):
        yml = tmp_path / 'opt.yml'
        yml.write_text(yaml.dump(opt, Dumper=OrderedDumper, sort_keys=False))  # quotes '2e-4' (a str) as such
        monkeypatch.setattr(sys, 'argv', ['train.py', '-opt', str(yml), *extra])
        return basicsr_options.parse_options(str(tmp_path), is_train=is_train)[0]

    yield run
    release_run_locks()


INT_GE1 = 'expected an integer >= 1, got '
BAD_VALUES = [  # key, value, the expected message (after the file name)
    ('datasets.train.gt_size', 0, 'datasets.train.gt_size: ' + INT_GE1 + '0'),
    ('datasets.train.gt_size', -8, 'datasets.train.gt_size: ' + INT_GE1 + '-8'),
    ('datasets.train.gt_size', 'abc', 'datasets.train.gt_size: ' + INT_GE1 + "'abc' (str)"),
    ('datasets.train.gt_size', True, 'datasets.train.gt_size: ' + INT_GE1 + 'True'),
    ('train.total_iter', 0, 'train.total_iter: ' + INT_GE1 + '0'),
    ('train.total_iter', -5, 'train.total_iter: ' + INT_GE1 + '-5'),
    ('logger.save_checkpoint_freq', 0, 'logger.save_checkpoint_freq: ' + INT_GE1 + '0'),
    ('logger.print_freq', 0, 'logger.print_freq: ' + INT_GE1 + '0'),
    ('datasets.train.dataset_enlarge_ratio', 0, 'datasets.train.dataset_enlarge_ratio: ' + INT_GE1 + '0'),
    ('train.optim_g.lr', 'abc', "train.optim_g.lr: expected a number > 0, got 'abc' (str)."),
    ('train.optim_g.lr', '2e-4', "train.optim_g.lr: expected a number > 0, got '2e-4' (str) (a quoted string: "
     'write the number without quotes, e.g. 2e-4).'),
    ('train.optim_g.lr', 0, 'train.optim_g.lr: expected a number > 0, got 0'),
    ('train.ema_decay', 'high', "train.ema_decay: expected a number >= 0 and < 1, got 'high' (str)"),
    ('train.ema_decay', 1.0, 'train.ema_decay: expected a number >= 0 and < 1, got 1.0'),
    ('train.optim_g.betas', [0.9], 'train.optim_g.betas: expected a list of 2 items, got [0.9]'),
    ('train.optim_g.betas', [0.9, 1.5], 'train.optim_g.betas[1]: expected a number >= 0 and < 1, got 1.5'),
    ('train.optim_g.weight_decay', -0.1, 'train.optim_g.weight_decay: expected a number >= 0, got -0.1'),
    ('train.warmup_iter', -2, 'train.warmup_iter: expected an integer >= -1, got -2'),
    ('train.pixel_opt.loss_weight', -1, 'train.pixel_opt.loss_weight: expected a number >= 0, got -1'),
    ('train.amp', 'fp8', "train.amp: expected one of None, 'none', 'bf16', 'fp16', got 'fp8' (str)"),
    ('train.scheduler.periods', [0], 'train.scheduler.periods[0]: ' + INT_GE1 + '0'),
    ('train.scheduler.eta_min', -1e-6, 'train.scheduler.eta_min: expected a number >= 0, got -1e-06'),
    ('val.val_freq', 0, 'val.val_freq: ' + INT_GE1 + '0'),
    ('datasets.train.batch_size_per_gpu', 0, 'datasets.train.batch_size_per_gpu: ' + INT_GE1 + '0'),
    ('datasets.train.num_worker_per_gpu', -1, 'datasets.train.num_worker_per_gpu: expected an integer >= 0, got -1'),
    ('datasets.train.use_hflip', 'yes please', "datasets.train.use_hflip: expected true or false, got 'yes please'"),
    ('path.allow_unsafe_pickle', 'true', "path.allow_unsafe_pickle: expected true or false, got 'true' (str)"),
    ('path.save_format', 'pickle', "path.save_format: expected one of 'pth', 'safetensors', got 'pickle' (str)"),
    ('num_gpu', -1, 'num_gpu: expected an integer >= 0, got -1'),
    ('name', '../elsewhere', "name: expected a folder name (no / or \\, not . or ..), got '../elsewhere' (str)"),
]


@pytest.mark.parametrize('key,value,expected', BAD_VALUES, ids=[f'{k}={v!r}' for k, v, _ in BAD_VALUES])
def test_bad_option_value_fails_at_parse_naming_key_value_and_range(parse, tmp_path, key, value, expected):
    opt = tiny_train_opt('no_data_needed', name='bad')
    set_key(opt, key, value)
    with pytest.raises(OptionError) as info:
        parse(opt)
    assert str(info.value).startswith(f"{tmp_path / 'opt.yml'}: {expected}"), str(info.value)
    assert not (tmp_path / 'experiments').exists()


def test_valid_options_parse_unchanged_with_integral_floats_and_exponent_numbers(parse, tmp_path):
    opt = tiny_train_opt('no_data_needed', name='good', save_freq=2.0)
    parsed = parse(opt, extra=['--force_yml', 'train:total_iter=8'])
    assert parsed['train']['total_iter'] == 8 and parsed['logger']['save_checkpoint_freq'] == 2.0
    text = yaml.safe_dump(opt, sort_keys=False).replace('lr: 0.001', 'lr: 2e-4')
    (tmp_path / 'exp.yml').write_text(text)
    assert load_yaml_file(tmp_path / 'exp.yml')['train']['optim_g']['lr'] == 2e-4


def test_missing_required_training_keys_are_named(parse):
    for key in ('train.total_iter', 'logger.print_freq', 'datasets.train.batch_size_per_gpu', 'train.optim_g.lr'):
        opt = tiny_train_opt('no_data_needed', name='missing')
        *parents, last = key.split('.')
        section = opt
        for p in parents:
            section = section[p]
        del section[last]
        with pytest.raises(OptionError, match=rf'{key}: missing'):
            parse(opt)


def test_bad_option_through_train_py_fails_before_any_work(tmp_path):
    opt = tiny_train_opt(os.path.join('datasets', 'absent'), name='bad_gt')
    opt['datasets']['train']['gt_size'] = -8
    out = run_failing(TRAIN, ['-opt', write_yaml(opt, tmp_path / 'bad.yml')], cwd=str(tmp_path))
    assert 'datasets.train.gt_size: expected an integer >= 1, got -8' in out and 'bad.yml' in out
    assert 'Traceback' not in out and not (tmp_path / 'experiments').exists()  # before folders, data or model


# ---------------------------------------------------------------------- 3. lock, 4. auto-resume, 5. stale temp files
HOLDER = '''
import sys
sys.path.insert(0, {root!r})
from mixcl_arch.utils.basicsr_fixes import apply_basicsr_fixes
apply_basicsr_fixes()
import basicsr.utils.options
sys.argv = ['train.py', '-opt', {yml!r}]
basicsr.utils.options.parse_options({cwd!r}, is_train=True)
print('locked', flush=True)
sys.stdin.read()
'''


@pytest.fixture(scope='module')
def experiment(tmp_path_factory):
    """A process holds experiments/tiny (through the real parse_options) while a second train.py starts; then the
    holder is killed and train.py trains 4 iterations (states 2 and 4)."""
    work = tmp_path_factory.mktemp('lock')
    make_pair_dataset(str(work / 'datasets' / 'tiny'), n_train=2, n_test=1, size=32)
    opt = tiny_train_opt(os.path.join('datasets', 'tiny'), name='tiny', total_iter=4, periods=8, save_freq=2)
    del opt['val'], opt['datasets']['val']
    opt['logger']['use_tb_logger'] = False
    yml = write_yaml(opt, work / 'tiny.yml')
    previous = work / 'experiments' / 'tiny' / 'models'
    previous.mkdir(parents=True)
    (previous / 'net_g_2.pth').write_bytes(b'an earlier run')
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore')
    holder = subprocess.Popen([sys.executable, '-c', HOLDER.format(root=ROOT, yml=yml, cwd=str(work))], cwd=str(work),
                              env=env, text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT)
    try:
        lines = []
        for line in holder.stdout:  # BasicSR prints before the holder says it holds the lock
            lines.append(line)
            if line.strip() == 'locked':
                break
        assert lines[-1:] == ['locked\n'], ''.join(lines)
        blocked = run_failing(TRAIN, ['-opt', yml], cwd=str(work))
        listing_while_held = sorted(os.listdir(work / 'experiments'))
        earlier_content = (previous / 'net_g_2.pth').read_bytes()
    finally:
        holder.send_signal(signal.SIGKILL)  # a crash: the flock dies with the process
        holder.wait()
    trained = run_entry(TRAIN, ['-opt', yml], cwd=str(work))
    return dict(work=work, yml=yml, holder_pid=holder.pid, blocked=blocked, listing=listing_while_held,
                earlier=earlier_content, trained=trained)


def test_second_run_with_the_same_name_fails_and_archives_nothing(experiment):
    out = experiment['blocked']
    assert 'is in use by another run' in out and f"process {experiment['holder_pid']}" in out
    assert os.path.join('experiments', 'tiny') in out and 'Traceback' not in out
    assert experiment['listing'] == ['.tiny.lock', 'tiny']  # not renamed to tiny_archived_*
    assert experiment['earlier'] == b'an earlier run'


def test_lock_dies_with_a_crashed_holder_and_the_next_run_trains(experiment):
    exp = experiment['work'] / 'experiments'
    assert 'End of training' in experiment['trained']
    assert {'net_g_2.pth', 'net_g_4.pth'} <= set(os.listdir(exp / 'tiny' / 'models'))
    archived = glob.glob(str(exp / 'tiny_archived_*'))  # BasicSR archives the earlier folder once nobody uses it
    assert len(archived) == 1 and open(os.path.join(archived[0], 'models', 'net_g_2.pth'), 'rb').read() == \
        b'an earlier run'


def test_lock_in_process_is_reentrant_and_excludes_other_processes(tmp_path):
    folder = tmp_path / 'experiments' / 'x'
    try:
        lock_run_folder(folder)
        lock_run_folder(folder)  # the same process: no-op
        code = ('import sys; sys.path.insert(0, sys.argv[1]);'
                'from mixcl_arch.utils.basicsr_fixes import lock_run_folder; lock_run_folder(sys.argv[2])')
        proc = subprocess.run([sys.executable, '-c', code, ROOT, str(folder)], capture_output=True, text=True)
        assert proc.returncode != 0 and 'RunFolderInUseError' in proc.stderr and str(os.getpid()) in proc.stderr
    finally:
        release_run_locks()
    lock_run_folder(folder)  # released: free again
    release_run_locks()
    assert issubclass(RunFolderInUseError, RuntimeError)


@pytest.fixture(scope='module')
def resumed(experiment):
    """Truncate the newest state (4), leave orphaned temp files, then --auto_resume to 6 iterations."""
    exp = experiment['work'] / 'experiments' / 'tiny'
    newest = exp / 'training_states' / '4.state'
    newest.write_bytes(newest.read_bytes()[:200])
    orphans = [exp / 'models' / '.net_g_6.pth.ab12cd_3.tmp', exp / 'training_states' / '.6.state.zz99yy00.tmp']
    keep = [exp / 'models' / 'notes.tmp', exp / 'models' / '.hidden.tmp', exp / 'training_states' / 'a.b.c.tmp']
    for path in orphans + keep:
        path.write_bytes(b'partial')
    out = run_entry(TRAIN, ['-opt', experiment['yml'], '--auto_resume', '--force_yml', 'train:total_iter=6'],
                    cwd=str(experiment['work']))
    return dict(exp=exp, out=out, orphans=orphans, keep=keep, newest=newest)


def test_auto_resume_skips_a_truncated_newest_state_with_a_warning(resumed):
    out = resumed['out']
    assert f"--auto_resume skips {resumed['newest']}" in out and 'not a loadable training state' in out
    assert 'Resuming training from epoch' in out and 'iter: 2.' in out
    state = load_training_state(str(resumed['exp'] / 'training_states' / '6.state'))
    assert state['iter'] == 6 and {int(s['step']) for s in state['optimizers'][0]['state'].values()} == {6}


def test_stale_temp_files_are_removed_at_training_start_and_nothing_else(resumed):
    assert not any(p.exists() for p in resumed['orphans'])
    assert all(p.read_bytes() == b'partial' for p in resumed['keep'])
    for path in resumed['orphans']:
        assert f'Removed {path}' in resumed['out']


def _states(tmp_path, iters, broken=None, net_broken=None, net_missing=None):
    """experiments/x with training states and net_g files for ``iters``; returns the run's option dict."""
    exp = tmp_path / 'experiments' / 'x'
    for it in iters:
        atomic_torch_save({'iter': it, 'epoch': 0, 'optimizers': [], 'schedulers': []},
                          exp / 'training_states' / f'{it}.state')
        if it != net_missing:
            atomic_torch_save({'params': {'w': torch.zeros(1)}}, exp / 'models' / f'net_g_{it}.pth')
    for it, kind in ((broken, 'state'), (net_broken, 'net')):
        if it is not None:
            path = exp / ('training_states' if kind == 'state' else 'models') / \
                (f'{it}.state' if kind == 'state' else f'net_g_{it}.pth')
            path.write_bytes(path.read_bytes()[:100])
    return {'name': 'x', 'root_path': str(tmp_path), 'auto_resume': True, 'network_g': {'type': 'X'},
            'path': {'models': str(exp / 'models'), 'resume_state': None}}


@pytest.mark.parametrize('damage', ['truncated', 'empty', 'net_missing', 'net_truncated'])
def test_find_resume_state_falls_back_past_each_kind_of_damage(tmp_path, capsys, damage):
    opt = _states(tmp_path, [2, 4, 6], broken=6 if damage == 'truncated' else None,
                  net_missing=6 if damage == 'net_missing' else None,
                  net_broken=6 if damage == 'net_truncated' else None)
    if damage == 'empty':
        (tmp_path / 'experiments' / 'x' / 'training_states' / '6.state').write_bytes(b'')
    path, state = find_resume_state(opt)
    assert path.endswith('4.state') and state['iter'] == 4
    warning = capsys.readouterr().err
    assert 'skips' in warning and '6.state' in warning and ('net_g_6.pth' in warning) == damage.startswith('net')


def test_auto_resume_with_no_usable_state_is_an_error_and_without_states_starts_fresh(tmp_path):
    opt = _states(tmp_path, [2], broken=2)
    with pytest.raises(RuntimeError, match=r'none of the 1 training states .* can be used'):
        load_resume_state(opt)
    fresh = _states(tmp_path / 'other', [])
    assert find_resume_state(fresh) == (None, None) and load_resume_state(copy.deepcopy(fresh)) is None


def test_explicit_damaged_resume_state_names_the_file(tmp_path):
    path = tmp_path / '5.state'
    path.write_bytes(b'PK\x03\x04 not really')
    with pytest.raises(ValueError, match=re.escape(f'{path}: not a loadable training state')):
        load_training_state(str(path))


def test_remove_stale_temp_files_spares_live_writers_and_other_files(tmp_path):
    orphan = tmp_path / '.out.png.k2j4h5g6.tmp'
    orphan.write_bytes(b'x')
    others = [tmp_path / 'out.png', tmp_path / '.out.png.tmp', tmp_path / '.out.png.TOOLONG99.tmp']
    for path in others:
        path.write_bytes(b'y')
    os.symlink(tmp_path / 'out.png', tmp_path / '.link.png.abcdefgh.tmp')
    with atomic_open(tmp_path / 'live.bin') as f:
        f.write(b'written while a cleaner ran')
        live = glob.glob(str(tmp_path / '.live.bin.*.tmp'))
        assert remove_stale_temp_files(str(tmp_path)) == [str(orphan)]
        assert glob.glob(str(tmp_path / '.live.bin.*.tmp')) == live and len(live) == 1  # its writer holds it
    assert (tmp_path / 'live.bin').read_bytes() == b'written while a cleaner ran'
    assert all(p.read_bytes() == b'y' for p in others) and os.path.islink(tmp_path / '.link.png.abcdefgh.tmp')
    assert remove_stale_temp_files(str(tmp_path / 'absent')) == []
