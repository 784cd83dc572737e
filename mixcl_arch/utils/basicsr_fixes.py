"""Run-time fixes for BasicSR 1.4.2's train / test pipelines on current torch, applied by the entry points.

``mixcl_arch/compat.py`` handles the import-time break (torchvision); everything here patches BasicSR *functions*
that ``mixcl_arch/train.py`` and ``mixcl_arch/test.py`` go through. Each fix says why it is needed:

1. ``load_resume_state`` (basicsr.train): 1.4.2 calls ``torch.cuda.current_device()`` (fails without CUDA), loads
   ``.state`` files with ``torch.load``'s default, which on torch >= 2.6 is ``weights_only=True`` and rejects the
   ``collections.Counter`` that MultiStepRestartLR keeps (on releases that do not allow-list it), looks for
   ``--auto_resume`` states under the *process* cwd instead of the experiments root, and crashes on a truncated
   newest state. The fix loads on CPU (optimizers move their state to the parameters' device) with Counter
   allow-listed, searches ``<root_path>/experiments/<name>/training_states``, and with ``--auto_resume`` skips (with
   a warning naming it) every newer state that does not load or whose ``net_*_<iter>`` file is missing or damaged.
2. ``init_dist`` (basicsr.utils.options): 1.4.2 hard-codes the NCCL backend and ``torch.cuda.set_device``; without
   CUDA that cannot work. The fix uses NCCL on CUDA (device = LOCAL_RANK) and gloo on CPU (or ``MIXCL_DIST_BACKEND``),
   and at exit every rank waits for the others and destroys the process group (:func:`leave_process_group`).
3. ``BaseModel.model_to_device``: 1.4.2 wraps DDP with ``device_ids=[torch.cuda.current_device()]``; on CPU
   ``device_ids`` must be None.
4. ``--local-rank``: ``torch.distributed.launch`` on current torch passes ``--local-rank=N`` while BasicSR's argparse
   only knows ``--local_rank``; :func:`normalize_argv` rewrites it (torchrun passes LOCAL_RANK in the environment).
5. ``CUDAPrefetcher`` (basicsr.train): ``prefetch_mode: cuda`` creates a CUDA stream and fails without CUDA, so a
   fast-path YAML could not run on a CPU machine. Without CUDA it falls back to BasicSR's CPUPrefetcher (logged).
6. ``parse_options`` (basicsr.utils.options / basicsr.train / basicsr.test) loads the option file with
   ``yaml.load(f, Loader=ordered_yaml()[0])``, an *unsafe* loader: a ``!!python/object/apply`` tag runs code.
   ``ordered_yaml`` is replaced by :func:`mixcl_arch.utils.options.ordered_yaml` (safe, same OrderedDict / ``!!float``
   behaviour), and the parsed options then pass, before any data loading or model building:
   :func:`mixcl_arch.utils.options.check_options` (typed, ranged keys and the conditioning sections; errors name the
   file and key); :func:`lock_run_folder` on ``experiments/<name>`` (training) or ``results/<name>`` (test), taken
   *before* BasicSR's ``mkdir_and_rename`` archives an existing folder, so a second run with the same name fails
   instead of archiving a folder in use; and, for training, :func:`mixcl_arch.utils.file_io.remove_stale_temp_files`
   in ``models/`` and ``training_states/`` (leftovers of a save interrupted by a kill).
7. Schedulers on resume (:func:`fix_scheduler_resume`): ``load_state_dict`` restored the saved ``periods``, so a run
   resumed with a longer ``total_iter`` crashed in ``CosineAnnealingRestartLR``; the option file's schedule now
   applies, and cosine ``periods`` that end before ``total_iter`` are an option error at start.
8. ``MessageLogger`` ETA (:func:`fix_eta`): BasicSR's last ETA was negative (``-1 day, 23:59:59``).
"""
import atexit
import collections
import os
import sys
from os import path as osp

import torch

from mixcl_arch.utils.file_io import remove_stale_temp_files, try_lock_file
from mixcl_arch.utils.options import OptionError, check_options, ordered_yaml

_APPLIED = False
_RUN_LOCKS = {}  # run folder -> open lock file, held until the process ends (or release_run_locks)


class RunFolderInUseError(RuntimeError):
    """Another live process runs with the same experiment / results folder."""


def normalize_argv(argv=None):
    """Rewrite ``--local-rank`` (current torch.distributed.launch) to BasicSR's ``--local_rank``, in place.

    Args:
        argv (list[str] | None): Defaults to ``sys.argv``.

    Returns:
        list[str]: The same list.
    """
    argv = sys.argv if argv is None else argv
    for i, arg in enumerate(argv):
        if arg == '--local-rank' or arg.startswith('--local-rank='):
            argv[i] = '--local_rank' + arg[len('--local-rank'):]
    return argv


def load_training_state(path):
    """Load a BasicSR ``.state`` file on CPU, safely (``weights_only``) with ``collections.Counter`` allowed.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: If it does not load (truncated, empty, not a state), naming the file and the reason.
    """
    if not osp.isfile(path):
        raise FileNotFoundError(f'Resume state file not found: {path} (path.resume_state / --auto_resume).')
    try:
        with torch.serialization.safe_globals([collections.Counter]):
            state = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as err:  # the zip / unpickler errors of a damaged file, all reported the same way
        raise ValueError(f'{path}: not a loadable training state ({type(err).__name__}: {err or "empty file"})') \
            from None
    if not (isinstance(state, dict) and isinstance(state.get('iter'), int)):
        raise ValueError(f'{path}: not a training state (expected a dict with an integer iter).')
    return state


def list_training_states(root_path, name):
    """The ``<root_path>/experiments/<name>/training_states/<iter>.state`` files, newest (highest iter) first."""
    state_dir = osp.join(root_path, 'experiments', name, 'training_states')
    if not osp.isdir(state_dir):
        return []
    iters = [int(stem) for stem, ext in map(osp.splitext, os.listdir(state_dir)) if ext == '.state' and stem.isdigit()]
    return [osp.join(state_dir, f'{it}.state') for it in sorted(iters, reverse=True)]


def find_latest_state(root_path, name):
    """The newest training state file (see :func:`list_training_states`), or None; it may not load."""
    states = list_training_states(root_path, name)
    return states[0] if states else None


def check_resume_networks(opt, resume_iter):
    """Load the ``models/net_<x>_<iter>.pth`` (or ``.safetensors``) file each network resumes from.

    Raises:
        FileNotFoundError: A network file is missing. ValueError: One does not load. Both name the file.
    """
    from mixcl_arch.utils.checkpoint import load_checkpoint_file, saved_weights_path
    ignored = opt['path'].get('ignore_resume_networks') or []
    for network in (key for key in opt if key.startswith('network_') and key not in ignored):
        path = saved_weights_path(osp.join(opt['path']['models'], f"net_{network[len('network_'):]}_{resume_iter}.pth"))
        if not osp.isfile(path):
            raise FileNotFoundError(f'{path}: missing, needed to resume {network} at iteration {resume_iter}.')
        try:
            load_checkpoint_file(path)
        except Exception as err:  # as in load_training_state: any damage is reported with the file
            raise ValueError(f'{path}: does not load ({type(err).__name__}: {err or "empty file"})') from None


def find_resume_state(opt):
    """``--auto_resume``: the newest state that loads and whose network files load, skipping damaged ones.

    Returns:
        tuple[str, dict] | tuple[None, None]: Path and loaded state; (None, None) when there is no state at all.

    Raises:
        RuntimeError: States exist but none is usable (the warnings name each one and why).
    """
    states = list_training_states(opt.get('root_path', os.getcwd()), opt['name'])
    for path in states:
        try:
            state = load_training_state(path)
            check_resume_networks(opt, state['iter'])
            return path, state
        except (FileNotFoundError, ValueError) as err:
            print(f'Warning: --auto_resume skips {path}: {err}', file=sys.stderr, flush=True)
    if states:
        raise RuntimeError(f'--auto_resume: none of the {len(states)} training states in {osp.dirname(states[0])} '
                           'can be used (see the warnings above). Set path.resume_state to a usable state, or run '
                           'without --auto_resume to start over (BasicSR then archives the experiment folder).')
    return None, None


def load_resume_state(opt):
    """Drop-in replacement of ``basicsr.train.load_resume_state`` (see fix 1 in the module docstring)."""
    from basicsr.utils import check_resume
    state = None
    if opt['auto_resume']:
        path, state = find_resume_state(opt)
        if path is not None:
            opt['path']['resume_state'] = path
    path = opt['path'].get('resume_state')
    if not path:
        return None
    state = state or load_training_state(path)
    check_resume(opt, state['iter'])
    from mixcl_arch.utils.checkpoint import saved_weights_path
    for key in [k for k in opt['path'] if k.startswith('pretrain_network_') and opt['path'][k]]:
        opt['path'][key] = saved_weights_path(opt['path'][key])  # check_resume names them .pth
    return state


def init_dist(launcher, backend=None, **kwargs):
    """Drop-in replacement of BasicSR's ``init_dist`` working with and without CUDA (fix 2)."""
    import torch.distributed as dist
    if dist.is_initialized():
        return
    if backend is None:
        backend = os.environ.get('MIXCL_DIST_BACKEND') or ('nccl' if torch.cuda.is_available() else 'gloo')
    if launcher == 'pytorch':
        if torch.cuda.is_available() and backend == 'nccl':
            local_rank = int(os.environ.get('LOCAL_RANK', os.environ.get('RANK', 0)))
            torch.cuda.set_device(local_rank % torch.cuda.device_count())
        dist.init_process_group(backend=backend, **kwargs)
    elif launcher == 'slurm':
        if not torch.cuda.is_available():
            # BasicSR's slurm setup calls torch.cuda.set_device(proc_id % device_count) and fails without CUDA
            raise RuntimeError('--launcher slurm needs CUDA GPUs; on CPU-only machines use torchrun --nproc_per_node=N '
                               'mixcl_arch/train.py -opt X --launcher pytorch (gloo).')
        from basicsr.utils import dist_util
        dist_util._init_dist_slurm(backend, **kwargs)
    else:
        raise ValueError(f'Invalid launcher type: {launcher!r} (expected none, pytorch or slurm).')
    atexit.register(leave_process_group)


def leave_process_group():
    """At exit: wait for every rank, then destroy the process group (fix 2).

    BasicSR never destroys it, and rank 0 validates alone after training: a rank that exited meanwhile tore its gloo
    threads down at interpreter exit (``terminate called without an active exception``, SIGABRT), so torchrun
    reported the run failed. A rank whose peers are already gone (a crash) just leaves.
    """
    import torch.distributed as dist
    if not dist.is_initialized():
        return
    try:
        dist.barrier()
    except Exception:  # a peer crashed or left: nothing to wait for
        pass
    dist.destroy_process_group()


def model_to_device(self, net):
    """Drop-in replacement of ``BaseModel.model_to_device``: DDP ``device_ids`` only on CUDA (fix 3)."""
    from torch.nn.parallel import DataParallel, DistributedDataParallel
    net = net.to(self.device)
    if self.opt['dist']:
        find_unused = self.opt.get('find_unused_parameters', False)
        device_ids = [torch.cuda.current_device()] if self.device.type == 'cuda' else None
        net = DistributedDataParallel(net, device_ids=device_ids, find_unused_parameters=find_unused)
    elif self.opt['num_gpu'] > 1:
        net = DataParallel(net)
    return net


def lock_run_folder(folder):
    """Lock the run folder ``folder`` (``experiments/<name>``, ``results/<name>``) for this process (fix 6).

    The lock is an ``flock`` on the sibling file ``.<name>.lock`` (inside the folder it would move along when BasicSR
    archives the folder), held until the process ends, a crash included, or :func:`release_run_locks`. Locking a
    folder this process already holds is a no-op.

    Raises:
        RunFolderInUseError: Another live process holds it; the message names the folder and that process.
    """
    folder = osp.abspath(folder)
    if folder in _RUN_LOCKS:
        return
    lock_path = osp.join(osp.dirname(folder), f'.{osp.basename(folder)}.lock')
    lock = try_lock_file(lock_path)
    if lock is None:
        with open(lock_path) as f:
            holder = f.read().strip() or 'unknown'
        raise RunFolderInUseError(
            f'{folder} is in use by another run (process {holder}, lock {lock_path}). Two runs with the same name '
            'would archive or overwrite each other\'s files: wait until it ends or change the name option.')
    lock.truncate(0)
    lock.write(f'{os.getpid()}\n')
    lock.flush()
    _RUN_LOCKS[folder] = lock


def release_run_locks():
    """Release the run-folder locks this process holds (the entry points call it when a run ends)."""
    while _RUN_LOCKS:
        _RUN_LOCKS.popitem()[1].close()


def _checked_parse_options(parse_options):
    """Wrap BasicSR's ``parse_options``: check, lock the run folder, clean leftovers (fix 6)."""

    def wrapped(root_path, is_train=True):
        opt, args = parse_options(root_path, is_train=is_train)
        try:
            check_options(opt)
        except OptionError as err:
            raise OptionError(f'{args.opt}: {err}') from None
        if opt['rank'] == 0:
            lock_run_folder(opt['path']['experiments_root' if is_train else 'results_root'])
            for key in ('models', 'training_states') if is_train else ():
                for path in remove_stale_temp_files(opt['path'][key]):
                    print(f'Removed {path}: the temporary file of an interrupted save.', flush=True)
        return opt, args

    wrapped.__wrapped__ = parse_options
    return wrapped


def cuda_prefetcher_or_cpu(loader, opt):
    """Drop-in replacement of ``CUDAPrefetcher`` in basicsr.train: CPUPrefetcher when CUDA is absent (fix 5)."""
    from basicsr.data.prefetch_dataloader import CPUPrefetcher, CUDAPrefetcher
    if torch.cuda.is_available() and opt.get('num_gpu', 0) != 0:
        return CUDAPrefetcher(loader, opt)
    from basicsr.utils import get_root_logger
    get_root_logger().info('prefetch_mode: cuda requested without CUDA: using the CPU prefetcher.')
    return CPUPrefetcher(loader)


# The attributes of BasicSR's schedulers that the options set (fix 7); the rest of their state (``last_epoch``,
# ``base_lrs``, ``_last_lr``, ...) is the position in the schedule.
SCHEDULE_KEYS = {
    'CosineAnnealingRestartLR': ('periods', 'restart_weights', 'eta_min', 'cumulative_period'),
    'MultiStepRestartLR': ('milestones', 'gamma', 'restarts', 'restart_weights'),
}


def load_scheduler_position(self, state_dict):
    """``load_state_dict`` of BasicSR's schedulers: the position comes from the state, the schedule from the options.

    torch's ``load_state_dict`` restores every attribute, BasicSR's ``periods`` / ``cumulative_period`` included, so
    a run resumed with a longer ``total_iter`` and ``periods`` kept the saved, shorter schedule, and past its end
    ``CosineAnnealingRestartLR.get_lr`` crashed (``get_position_from_periods`` returns None: ``TypeError: list
    indices must be integers or slices, not NoneType``). Fix 7.
    """
    from torch.optim.lr_scheduler import LRScheduler
    schedule = next(SCHEDULE_KEYS[c.__name__] for c in type(self).__mro__ if c.__name__ in SCHEDULE_KEYS)
    LRScheduler.load_state_dict(self, {k: v for k, v in state_dict.items() if k not in schedule})


def _checked_setup_schedulers(setup_schedulers):
    """Wrap ``BaseModel.setup_schedulers``: cosine ``periods`` that end before ``total_iter`` are an error (fix 7)."""

    def wrapped(self):
        setup_schedulers(self)
        total_iter = self.opt['train']['total_iter']
        for scheduler in self.schedulers:
            end = getattr(scheduler, 'cumulative_period', [None])[-1]
            # BasicSR steps the scheduler from iteration 2 on: iteration i runs at last_epoch = i - 1
            if end is not None and total_iter - 1 > end:
                raise OptionError(
                    f'train.scheduler.periods: {list(scheduler.periods)} sum to {end}, so {type(scheduler).__name__} '
                    f'has no learning rate after iteration {end + 1}, but train.total_iter is {total_iter}. Make the '
                    f'periods sum to total_iter (e.g. periods: [{total_iter}]); to resume with a longer total_iter, '
                    'extend periods too (the resumed run follows the periods of the option file).')

    wrapped.__wrapped__ = setup_schedulers
    return wrapped


def fix_scheduler_resume():
    """Install fix 7: resumed schedulers follow the option file's schedule, which must cover ``total_iter``."""
    from basicsr.models import lr_scheduler
    from basicsr.models.base_model import BaseModel
    for name in SCHEDULE_KEYS:
        getattr(lr_scheduler, name).load_state_dict = load_scheduler_position
    if not hasattr(BaseModel.setup_schedulers, '__wrapped__'):
        BaseModel.setup_schedulers = _checked_setup_schedulers(BaseModel.setup_schedulers)


def log_training_message(self, log_vars):
    """Drop-in replacement of BasicSR's ``MessageLogger.__call__`` with a correct ETA (fix 8).

    BasicSR's ETA is ``elapsed / (iter - start_iter + 1) * (total_iter - iter - 1)``: one iteration left too few, so
    the last message shows ``eta: -1 day, 23:59:59`` once an iteration takes a second or more, and one timed
    iteration too many. Here ETA = mean time of the iterations since the timer started x iterations left (>= 0);
    the message format and the TensorBoard scalars are BasicSR's.

    Args:
        log_vars (dict): ``epoch``, ``iter``, ``lrs`` (list[float]), optionally ``time`` and ``data_time`` (s), and
            the losses (name -> float).
    """
    import datetime
    import time

    from basicsr.utils.dist_util import get_dist_info
    if get_dist_info()[0] != 0:  # BasicSR's @master_only
        return
    epoch, current_iter, lrs = log_vars.pop('epoch'), log_vars.pop('iter'), log_vars.pop('lrs')
    lr_text = ''.join(f'{v:.3e},' for v in lrs)
    message = f'[{self.exp_name[:5]}..][epoch:{epoch:3d}, iter:{current_iter:8,d}, lr:({lr_text})] '
    if 'time' in log_vars:
        iter_time, data_time = log_vars.pop('time'), log_vars.pop('data_time')
        timed = current_iter - self.start_iter
        per_iter = (time.time() - self.start_time) / timed if timed > 0 else iter_time
        eta = datetime.timedelta(seconds=int(per_iter * max(0, self.max_iters - current_iter)))
        message += f'[eta: {eta}, time (data): {iter_time:.3f} ({data_time:.3f})] '
    for k, v in log_vars.items():
        message += f'{k}: {v:.4e} '
        if self.use_tb_logger and 'debug' not in self.exp_name:
            self.tb_logger.add_scalar(f'losses/{k}' if k.startswith('l_') else k, v, current_iter)
    self.logger.info(message)


def reset_eta_timer(self):
    """Drop-in replacement of ``MessageLogger.reset_start_time``, which BasicSR calls after iteration 1 (fix 8)."""
    import time
    self.start_time = time.time()
    self.start_iter = 1


def fix_eta():
    """Install fix 8 (see :func:`log_training_message`)."""
    from basicsr.utils.logger import MessageLogger
    MessageLogger.__call__, MessageLogger.reset_start_time = log_training_message, reset_eta_timer


def apply_basicsr_fixes():
    """Install fixes 1-8 (idempotent). Call before ``train_pipeline`` / ``test_pipeline``."""
    global _APPLIED
    if _APPLIED:
        return
    import mixcl_arch  # noqa: F401  (torchvision alias before basicsr)
    import basicsr.train
    import basicsr.utils.options
    from basicsr.models.base_model import BaseModel
    basicsr.train.load_resume_state = load_resume_state
    basicsr.train.CUDAPrefetcher = cuda_prefetcher_or_cpu
    import basicsr.test
    basicsr.utils.options.ordered_yaml = ordered_yaml
    for module in (basicsr.utils.options, basicsr.train, basicsr.test):
        if not hasattr(module.parse_options, '__wrapped__'):
            module.parse_options = _checked_parse_options(module.parse_options)
    basicsr.utils.options.init_dist = init_dist
    BaseModel.model_to_device = model_to_device
    fix_scheduler_resume()
    fix_eta()
    _APPLIED = True


def run_pipeline(kind, root_path=None):
    """Run BasicSR's ``train_pipeline`` or ``test_pipeline`` with every fix applied (the body of both entry points).

    Args:
        kind (str): 'train' or 'test'.
        root_path (str | None): Where ``experiments/``, ``results/``, ``tb_logger/`` go; default: the working
            directory.

    A bad option file (:class:`OptionError`) or a run folder in use by another run exits with status 1 and a one-line
    message instead of a traceback.
    """
    import importlib
    apply_basicsr_fixes()
    normalize_argv()
    pipeline = getattr(importlib.import_module(f'basicsr.{kind}'), f'{kind}_pipeline')
    try:
        pipeline(os.path.abspath(root_path or os.getcwd()))
    except (OptionError, RunFolderInUseError) as err:
        sys.exit(f'{os.path.basename(sys.argv[0])}: error: {err}')
    finally:
        release_run_locks()
