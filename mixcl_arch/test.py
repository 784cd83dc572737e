"""Test entry point: ``python mixcl_arch/test.py -opt options/test/<file>.yml``.

Importing :mod:`mixcl_arch` registers everything, :func:`mixcl_arch.utils.basicsr_fixes.apply_basicsr_fixes` repairs
BasicSR 1.4.2 on current torch (option files loaded safely and checked first, one run per results folder), then
BasicSR's ``test_pipeline`` writes ``results/<name>/`` (log, images) under the current working directory.
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
    """Run BasicSR's test_pipeline with every fix, under ``root_path`` (default: the current working directory)."""
    run_pipeline('test', root_path)


if __name__ == '__main__':
    main()
