"""2-process DDP training on CPU (gloo) through ``torchrun ... mixcl_arch/train.py --launcher pytorch``."""
import os
import shutil
import sys

import pytest
import torch

from _train_helpers import make_pair_dataset, run_entry, tiny_train_opt, validation_values, write_dump_entry, write_yaml


@pytest.mark.skipif(shutil.which('torchrun') is None and not os.path.exists(
    os.path.join(os.path.dirname(sys.executable), 'torchrun')), reason='torchrun is part of torch; not on PATH')
@pytest.mark.parametrize('net_type', ['MixDehazeNet', 'MixCLDehazeNet', 'CLIPHazeNet'])
def test_torchrun_two_cpu_processes_end_with_identical_weights(tmp_path, net_type):
    make_pair_dataset(str(tmp_path / 'datasets' / 'tiny'), n_train=8)
    net = None
    if net_type == 'MixCLDehazeNet':
        # conditioned net with online conditioning from a (tiny) CLIP: the fusion keeps reference parameters that
        # never get a gradient, which DDP must tolerate
        from _clip_helpers import make_tiny_clip, tiny_clip_opt
        net = dict(type='MixCLDehazeNet', embed_dims=[8, 16, 16, 16, 8], depths=[1] * 5, data_range='unit')
    if net_type == 'CLIPHazeNet':
        # density map and embedding computed online by each rank (the datasets have no store): the DCP stand-in
        net = dict(type='CLIPHazeNet', width=4, depths=[1, 1, 1], bottleneck_depth=1, d_state=4, film_hidden=8,
                   data_range='unit')
    opt = tiny_train_opt(os.path.join('datasets', 'tiny'), name='tiny_ddp', total_iter=3, periods=3, save_freq=3,
                         val_freq=3, net=net)
    if net_type == 'MixCLDehazeNet':
        opt['clip'] = tiny_clip_opt(make_tiny_clip(tmp_path / 'tiny_clip.pt'))
    if net_type == 'CLIPHazeNet':
        opt['cliphaze_cond'] = dict(density_source='dcp', standin_domain='outdoor')
    opt['model_type'] = 'StateDumpDehazeModel'  # also writes every rank's final weights (rank<r>.pth)
    yml = write_yaml(opt, tmp_path / 'ddp.yml')
    script = write_dump_entry(tmp_path)
    torchrun = shutil.which('torchrun') or os.path.join(os.path.dirname(sys.executable), 'torchrun')
    # --standalone: the rendezvous store binds port 0 itself and the workers join that store, so no free port is
    # picked and released before use (which another process could take in between).
    # '--local-rank=0' is what torch.distributed.launch passes; BasicSR's parser only knew '--local_rank'
    log = run_entry(script, ['-opt', yml, '--launcher', 'pytorch', '--local-rank=0'], cwd=str(tmp_path),
                    launcher=[torchrun, '--standalone', '--nproc_per_node=2'], timeout=300)
    assert 'World size (gpu number): 2' in log
    assert validation_values(log, 'psnr')  # rank 0 validated
    r0, r1 = (torch.load(tmp_path / f'rank{r}.pth', weights_only=True) for r in (0, 1))
    assert r0['world'] == r1['world'] == 2 and r0['backend'] == 'gloo'
    params = [k for k in r0['state'] if 'running_' not in k and 'num_batches' not in k]
    assert len(params) > 20
    for k in params:
        assert torch.equal(r0['state'][k], r1['state'][k]), k
    # rank 0's checkpoint holds these weights (BatchNorm running stats are per rank, as DDP without SyncBN)
    saved = torch.load(tmp_path / 'experiments' / 'tiny_ddp' / 'models' / 'net_g_latest.pth', weights_only=True)
    assert all(torch.equal(saved['params'][k], r0['state'][k]) for k in params)



def test_init_dist_leaves_the_process_group_at_exit():
    """Every rank waits for the others and destroys the group at exit (BasicSR never does, and rank 0 validates alone
    after training: a rank exiting with live gloo threads can abort)."""
    import subprocess
    code = ('import atexit, os, torch.distributed as dist\n'
            'from mixcl_arch.utils import basicsr_fixes\n'
            # atexit runs last-in first-out: this check runs after the handler init_dist registers
            "atexit.register(lambda: print('group destroyed' if not dist.is_initialized() else 'group alive'))\n"
            "os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT='0', RANK='0', WORLD_SIZE='1')\n"
            "basicsr_fixes.init_dist('pytorch', backend='gloo')\n"
            'assert dist.is_initialized()\n')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith('group destroyed')
