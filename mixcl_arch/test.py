"""Test entry point: ``python mixcl_arch/test.py -opt options/test/<file>.yml``.

After the argument check of :mod:`mixcl_arch_cli`, :func:`mixcl_arch.register` registers everything,
:func:`mixcl_arch.utils.basicsr_fixes.apply_basicsr_fixes` repairs BasicSR 1.4.2 on current torch (option files loaded
safely and checked first, one run per results folder), then BasicSR's ``test_pipeline`` writes ``results/<name>/``
(log, images) under the current working directory.
"""

import functools
import os.path as osp
import sys

if __name__ == '__main__' and not __package__:  # run as a script: the package from the repo root, not its folder
    sys.path[0] = osp.dirname(osp.dirname(osp.abspath(__file__)))

from mixcl_arch_cli import run_basicsr  # noqa: E402  (standard library only)

#: ``main(root_path=None)``: BasicSR's test_pipeline with every fix (``root_path`` default: the working directory).
main = functools.partial(run_basicsr, 'test')

if __name__ == '__main__':
    main()
