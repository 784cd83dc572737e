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
from mixcl_arch.utils.basicsr_fixes import run_pipeline  # noqa: E402


def main(root_path=None):
    """Run BasicSR's train_pipeline with every fix, under ``root_path`` (default: the current working directory)."""
    run_pipeline('train', root_path)


if __name__ == '__main__':
    main()
