"""Resume through ``mixcl_arch/train.py --auto_resume``: the resumed run starts from exactly what was saved.

A first run trains 2 iterations with fp16 autocast + GradScaler (on CPU) and EMA and saves at iteration 2; a second
run with ``--auto_resume`` goes on to 4. Its model dumps its state right after resuming (``StateDumpDehazeModel`` of
``tests/_train_helpers.py``, otherwise the real entry point), and that state is compared with the saved files.
"""
import os

import pytest
import torch

from _train_helpers import make_pair_dataset, run_entry, tiny_train_opt, write_dump_entry, write_yaml
from mixcl_arch.utils.basicsr_fixes import load_training_state
from mixcl_arch.utils.checkpoint import load_checkpoint_file


def assert_same(a, b, where):
    """Recursive equality of (nested) state dicts: tensors bit-identical, everything else ==."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f'{where}: keys {sorted(a)} != {sorted(b)}'
        for k in a:
            assert_same(a[k], b[k], f'{where}.{k}')
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f'{where}[{i}]')
    else:
        assert a == b, f'{where}: {a!r} != {b!r}'


@pytest.fixture(scope='module')
def resumed(tmp_path_factory):
    work = tmp_path_factory.mktemp('resume')
    make_pair_dataset(str(work / 'datasets' / 'tiny'), n_train=4, n_test=1)
    opt = tiny_train_opt(os.path.join('datasets', 'tiny'), name='tiny_resume', total_iter=2, periods=8, save_freq=2,
                         val_freq=100, ema_decay=0.5, amp='fp16')
    opt['model_type'] = 'StateDumpDehazeModel'
    yml = write_yaml(opt, work / 'resume.yml')
    script = write_dump_entry(work)
    run_entry(script, ['-opt', yml], cwd=str(work))
    exp = work / 'experiments' / 'tiny_resume'
    saved_net = load_checkpoint_file(str(exp / 'models' / 'net_g_2.pth'))
    saved_state = load_training_state(str(exp / 'training_states' / '2.state'))
    log = run_entry(script, ['-opt', yml, '--auto_resume', '--force_yml', 'train:total_iter=4'], cwd=str(work))
    dump = torch.load(work / 'resumed.pth', weights_only=True)
    final_state = load_training_state(str(exp / 'training_states' / '4.state'))
    return dict(saved_net=saved_net, saved_state=saved_state, dump=dump, log=log, final_state=final_state)


def test_resumed_network_and_ema_weights_equal_the_saved_ones(resumed):
    assert 'Resuming training from epoch' in resumed['log'] and 'iter: 2.' in resumed['log']
    saved, dump = resumed['saved_net'], resumed['dump']
    assert set(saved) == {'params', 'params_ema', 'meta'}
    # the two are distinguishable (EMA decay 0.5 over 2 steps), so loading the wrong one would be seen
    assert any(not torch.equal(saved['params'][k], saved['params_ema'][k]) for k in saved['params'])
    assert_same(dump['net_g'], saved['params'], 'net_g')
    assert_same(dump['net_g_ema'], saved['params_ema'], 'net_g_ema')


def test_resumed_optimizer_scheduler_and_grad_scaler_equal_the_saved_ones(resumed):
    state, dump = resumed['saved_state'], resumed['dump']
    assert state['iter'] == 2
    assert_same(dump['optimizer'], state['optimizers'][0], 'optimizer')
    assert {int(s['step']) for s in dump['optimizer']['state'].values()} == {2}
    assert_same(dump['scheduler'], state['schedulers'][0], 'scheduler')
    # fp16 on CPU: the GradScaler exists, was saved, and has moved away from a fresh scaler's state
    assert dump['scaler'] is not None and 'scaler' in state
    assert_same(dump['scaler'], state['scaler'], 'scaler')
    assert dump['scaler'] != torch.amp.GradScaler('cpu').state_dict()


def test_training_goes_on_from_the_resumed_state(resumed):
    """Iterations 3 and 4 follow on: Adam's step counters and the scheduler continue (a fresh start would be at 2)."""
    log, final = resumed['log'], resumed['final_state']
    assert 'iter:       3,' in log and 'iter:       1,' not in log
    assert final['iter'] == 4
    assert {int(s['step']) for s in final['optimizers'][0]['state'].values()} == {4}
    # BasicSR steps the scheduler from iteration 2 on, so last_epoch == iter - 1
    assert final['schedulers'][0]['last_epoch'] == 3
    assert final['schedulers'][0]['periods'] == resumed['saved_state']['schedulers'][0]['periods']
