"""Run-time fixes for BasicSR 1.4.2's train / test pipelines on current torch, applied by the entry points.

``mixcl_arch/compat.py`` handles the import-time break (torchvision); everything here patches BasicSR *functions*
that ``mixcl_arch/train.py`` and ``mixcl_arch/test.py`` go through. Each fix says why it is needed:

1. ``load_resume_state`` (basicsr.train): 1.4.2 calls ``torch.cuda.current_device()`` (fails without CUDA), loads
   ``.state`` files with ``torch.load``'s default, which on torch >= 2.6 is ``weights_only=True`` and rejects the
   ``collections.Counter`` that MultiStepRestartLR keeps (on releases that do not allow-list it), and looks for
   ``--auto_resume`` states under the *process* cwd instead of the experiments root. The fix loads on CPU
   (optimizers move their state to the parameters' device) with Counter allow-listed, and searches
   ``<root_path>/experiments/<name>/training_states``.
2. ``init_dist`` (basicsr.utils.options): 1.4.2 hard-codes the NCCL backend and ``torch.cuda.set_device``; without
   CUDA that cannot work. The fix uses NCCL on CUDA (device = LOCAL_RANK) and gloo on CPU (or ``MIXCL_DIST_BACKEND``).
3. ``BaseModel.model_to_device``: 1.4.2 wraps DDP with ``device_ids=[torch.cuda.current_device()]``; on CPU
   ``device_ids`` must be None.
4. ``--local-rank``: ``torch.distributed.launch`` on current torch passes ``--local-rank=N`` while BasicSR's argparse
   only knows ``--local_rank``; :func:`normalize_argv` rewrites it (torchrun passes LOCAL_RANK in the environment).
5. ``CUDAPrefetcher`` (basicsr.train): ``prefetch_mode: cuda`` creates a CUDA stream and fails without CUDA, so a
   fast-path YAML could not run on a CPU machine. Without CUDA it falls back to BasicSR's CPUPrefetcher (logged).
6. ``parse_options`` (basicsr.train / basicsr.test): BasicSR hands each dataset only its own options, so the
   top-level ``clip:`` section would never reach the dataset's feature-store provenance check. After parsing, every
   dataset without its own ``clip:`` gets a copy of the CLIP prior's options (:func:`propagate_clip_options`).
"""
import collections
import os
import sys
from os import path as osp

import torch

_APPLIED = False


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
    """
    if not osp.isfile(path):
        raise FileNotFoundError(f'Resume state file not found: {path} (path.resume_state / --auto_resume).')
    with torch.serialization.safe_globals([collections.Counter]):
        return torch.load(path, map_location='cpu', weights_only=True)


def find_latest_state(root_path, name):
    """Return the newest ``<root_path>/experiments/<name>/training_states/<iter>.state``, or None."""
    state_dir = osp.join(root_path, 'experiments', name, 'training_states')
    if not osp.isdir(state_dir):
        return None
    iters = []
    for fname in os.listdir(state_dir):
        stem, ext = osp.splitext(fname)
        if ext == '.state' and stem.isdigit():
            iters.append(int(stem))
    return osp.join(state_dir, f'{max(iters)}.state') if iters else None


def load_resume_state(opt):
    """Drop-in replacement of ``basicsr.train.load_resume_state`` (see fix 1 in the module docstring)."""
    from basicsr.utils import check_resume
    if opt['auto_resume']:
        found = find_latest_state(opt.get('root_path', os.getcwd()), opt['name'])
        if found is not None:
            opt['path']['resume_state'] = found
    path = opt['path'].get('resume_state')
    if not path:
        return None
    state = load_training_state(path)
    check_resume(opt, state['iter'])
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


def _parse_options_with_clip(parse_options):

    def wrapped(root_path, is_train=True):
        opt, args = parse_options(root_path, is_train=is_train)
        return propagate_clip_options(opt), args

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
    for module in (basicsr.train, basicsr.test):
        if not hasattr(module.parse_options, '__wrapped__'):
            module.parse_options = _parse_options_with_clip(module.parse_options)
    basicsr.utils.options.init_dist = init_dist
    BaseModel.model_to_device = model_to_device
    _APPLIED = True
