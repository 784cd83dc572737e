"""Two torchrun "nodes" on localhost (``--nnodes 2``, c10d rendezvous, gloo) train through ``mixcl_arch/train.py``.

The commands are those of docs/training.md ("Several machines"), with one process per node and two additions that
only a single host needs: the rendezvous endpoint is a free local port, and ``is_host`` says which agent hosts the
rendezvous store (on separate machines torchrun infers it from the host name; here both agents would match).
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import uuid

import pytest
import torch

from _train_helpers import make_pair_dataset, tiny_train_opt, validation_values, write_dump_entry, write_yaml

TORCHRUN = shutil.which('torchrun') or os.path.join(os.path.dirname(sys.executable), 'torchrun')
# the rendezvous could not take its port (another process took it after we picked it): retried with a new port
PORT_TROUBLE = ('address already in use', 'EADDRINUSE', 'RendezvousConnectionError', 'Connection refused')

# Records what torchrun gave each worker, then runs the dump entry (real train.py + every rank's final weights).
NODE_ENTRY = '''
import json, os, runpy, sys
keys = ('RANK', 'LOCAL_RANK', 'GROUP_RANK', 'WORLD_SIZE', 'LOCAL_WORLD_SIZE', 'MASTER_ADDR')
with open(f"env_rank{{os.environ['RANK']}}.json", 'w') as f:
    json.dump({{k: os.environ.get(k) for k in keys}}, f)
sys.argv[0] = {dump!r}
runpy.run_path({dump!r}, run_name='__main__')
'''


def free_port():
    """A port free at the moment of the call (the caller retries if another process takes it before use)."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def run_two_nodes(entry, args, cwd, timeout=420):
    """Start node 0 and node 1 (one torchrun each) and wait for both.

    Returns:
        tuple[int, int, str]: The return codes of node 0 and node 1 and their joined output.
    """
    port, run_id = free_port(), f'mixcl-{uuid.uuid4().hex[:8]}'
    env = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', PYTHONWARNINGS='ignore')
    procs = []
    for node in (0, 1):
        cmd = [TORCHRUN, '--nnodes', '2', '--nproc-per-node', '1', '--node-rank', str(node),
               '--rdzv-backend', 'c10d', '--rdzv-endpoint', f'127.0.0.1:{port}', '--rdzv-id', run_id,
               '--rdzv-conf', f'is_host={str(node == 0).lower()},join_timeout=120', entry] + list(args)
        procs.append(subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
    try:
        outs = [p.communicate(timeout=timeout)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return procs[0].returncode, procs[1].returncode, f'--- node 0\n{outs[0]}\n--- node 1\n{outs[1]}'


@pytest.mark.skipif(not os.path.exists(TORCHRUN), reason='torchrun is part of torch; not found next to python')
def test_two_torchrun_nodes_with_c10d_rendezvous_end_with_identical_weights(tmp_path):
    make_pair_dataset(str(tmp_path / 'datasets' / 'tiny'), n_train=8)
    opt = tiny_train_opt(os.path.join('datasets', 'tiny'), name='tiny_nodes', total_iter=3, periods=3, save_freq=3,
                         val_freq=3)
    opt['model_type'] = 'StateDumpDehazeModel'  # writes every rank's final weights (rank<r>.pth)
    yml = write_yaml(opt, tmp_path / 'nodes.yml')
    entry = tmp_path / 'node_entry.py'
    entry.write_text(NODE_ENTRY.format(dump=write_dump_entry(tmp_path)))
    for attempt in range(3):
        rc0, rc1, log = run_two_nodes(str(entry), ['-opt', yml, '--launcher', 'pytorch'], str(tmp_path))
        if (rc0, rc1) == (0, 0) or not any(s in log for s in PORT_TROUBLE):
            break
        shutil.rmtree(tmp_path / 'experiments', ignore_errors=True)
    assert (rc0, rc1) == (0, 0), log[-8000:]
    assert 'World size (gpu number): 2' in log
    assert validation_values(log, 'psnr')  # rank 0 validated
    # two agents, one worker each: the ranks come from the rendezvous, one per node
    envs = [json.loads((tmp_path / f'env_rank{r}.json').read_text()) for r in (0, 1)]
    assert sorted(e['GROUP_RANK'] for e in envs) == ['0', '1']
    assert all(e['LOCAL_RANK'] == '0' and e['LOCAL_WORLD_SIZE'] == '1' and e['WORLD_SIZE'] == '2' for e in envs)
    r0, r1 = (torch.load(tmp_path / f'rank{r}.pth', weights_only=True) for r in (0, 1))
    assert r0['world'] == r1['world'] == 2 and r0['backend'] == r1['backend'] == 'gloo'
    params = [k for k in r0['state'] if 'running_' not in k and 'num_batches' not in k]
    assert len(params) > 20
    for k in params:
        assert torch.equal(r0['state'][k], r1['state'][k]), k
    # the weights moved (3 iterations), and rank 0's checkpoint holds them
    saved = torch.load(tmp_path / 'experiments' / 'tiny_nodes' / 'models' / 'net_g_latest.pth', weights_only=True)
    assert all(torch.equal(saved['params'][k], r0['state'][k]) for k in params)
