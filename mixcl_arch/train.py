"""Training entry point: ``python mixcl_arch/train.py -opt options/train/<file>.yml [--auto_resume]``.

Thin like HAT / Real-ESRGAN: importing :mod:`mixcl_arch` registers the archs, datasets, models, losses and metrics,
:func:`mixcl_arch.utils.basicsr_fixes.apply_basicsr_fixes` repairs BasicSR 1.4.2 on current torch (resume without
CUDA / on torch >= 2.6, DDP on CPU with gloo, ``--local-rank``) and makes it safe (option files loaded with a safe
YAML loader and checked before any work, one run per experiment folder), then BasicSR's ``train_pipeline`` runs with
``experiments/``, ``tb_logger/`` under the current working directory. Distributed:
``torchrun --nproc_per_node=N mixcl_arch/train.py -opt X --launcher pytorch``.
"""
import os
import sys

if __name__ == '__main__' and not __package__:
    # run as a script: sys.path[0] is this package folder; import the package from the repo root instead
    _here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]
    sys.path.insert(0, os.path.dirname(_here))

import mixcl_arch  # noqa: E402,F401  (registrations + torchvision compat, before basicsr)
from mixcl_arch.utils.basicsr_fixes import (RunFolderInUseError, apply_basicsr_fixes, normalize_argv,  # noqa: E402
                                             release_run_locks)
from mixcl_arch.utils.options import OptionError  # noqa: E402


def main(root_path=None):
    """Run BasicSR's train_pipeline with ``root_path`` (default: the current working directory).

    A bad option file (:class:`OptionError`) or a run folder in use by another run exits with status 1 and a one-line
    message instead of a traceback.
    """
    apply_basicsr_fixes()
    normalize_argv()
    from basicsr.train import train_pipeline
    try:
        train_pipeline(os.path.abspath(root_path or os.getcwd()))
    except (OptionError, RunFolderInUseError) as err:
        sys.exit(f'{os.path.basename(sys.argv[0])}: error: {err}')
    finally:
        release_run_locks()


if __name__ == '__main__':
    main()
