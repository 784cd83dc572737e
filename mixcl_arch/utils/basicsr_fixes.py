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
   CUDA that cannot work. The fix uses NCCL on CUDA (device = LOCAL_RANK) and gloo on CPU (or ``MIXCL_DIST_BACKEND``).
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
   :func:`mixcl_arch.utils.options.check_options` (typed, ranged keys; errors name the file and key);
   :func:`propagate_clip_options` (BasicSR hands each dataset only its own options, so the top-level ``clip:``
   would never reach the dataset's feature-store provenance check); :func:`lock_run_folder` on
   ``experiments/<name>`` (training) or ``results/<name>`` (test), taken *before* BasicSR's ``mkdir_and_rename``
   archives an existing folder, so a second run with the same name fails instead of archiving a folder in use;
   and, for training, :func:`mixcl_arch.utils.file_io.remove_stale_temp_files` in ``models/`` and
   ``training_states/`` (leftovers of a save interrupted by a kill).
"""
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


def propagate_clip_options(opt):
    """Copy the top-level ``clip:`` prior options into every dataset that has none (fix 6); returns ``opt``."""
    from mixcl_arch.clip import COND_OPTION_KEYS
    clip_opt = opt.get('clip')
    if not isinstance(clip_opt, dict):
        return opt
    prior_opt = {k: v for k, v in clip_opt.items() if k not in COND_OPTION_KEYS and v is not None}
    for ds in (opt.get('datasets') or {}).values():
        if isinstance(ds, dict) and ds.get('clip') is None:
            ds['clip'] = dict(prior_opt)
    return opt


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
    """Wrap BasicSR's ``parse_options``: check, propagate ``clip:``, lock the run folder, clean leftovers (fix 6)."""

    def wrapped(root_path, is_train=True):
        opt, args = parse_options(root_path, is_train=is_train)
        try:
            check_options(opt)
        except OptionError as err:
            raise OptionError(f'{args.opt}: {err}') from None
        propagate_clip_options(opt)
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


def apply_basicsr_fixes():
    """Install fixes 1-6 (idempotent). Call before ``train_pipeline`` / ``test_pipeline``."""
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
    _APPLIED = True
