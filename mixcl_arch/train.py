"""Training entry point: ``python mixcl_arch/train.py -opt options/train/<file>.yml [--auto_resume]``.

Thin like HAT / Real-ESRGAN: after the argument check of :mod:`mixcl_arch_cli`, :func:`mixcl_arch.register`
registers the archs, datasets, models, losses and metrics, :func:`mixcl_arch.utils.basicsr_fixes.apply_basicsr_fixes`
repairs BasicSR 1.4.2 on current torch (resume without CUDA / on torch >= 2.6, DDP on CPU with gloo, ``--local-rank``)
and makes it safe (option files loaded with a safe YAML loader and checked before any work, one run per experiment
folder), then BasicSR's ``train_pipeline`` runs with ``experiments/``, ``tb_logger/`` under the current working
directory. Distributed:
``torchrun --nproc_per_node=N mixcl_arch/train.py -opt X --launcher pytorch``.
"""

import functools
import os.path as osp
import sys

if __name__ == '__main__' and not __package__:  # run as a script: the package from the repo root, not its folder
    sys.path[0] = osp.dirname(osp.dirname(osp.abspath(__file__)))

from mixcl_arch_cli import run_basicsr  # noqa: E402  (standard library only)

#: ``main(root_path=None)``: BasicSR's train_pipeline with every fix (``root_path`` default: the working directory).
main = functools.partial(run_basicsr, 'train')

if __name__ == '__main__':
    main()
