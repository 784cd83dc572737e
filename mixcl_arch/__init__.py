"""mixcl_arch: a BasicSR plugin for CLIP-conditioned image dehazing.

Importing the package registers every arch, dataset, model, loss and metric it has in BasicSR's registries
(:func:`register`, which imports torch and basicsr). The command-line fronts answer ``--help`` and argument errors
before that: while one of them imports the package, the registration is left to it (it calls :func:`register` once
its arguments are parsed). That is the case

- while a console script of :mod:`mixcl_arch_cli` (``mixcl-dehaze``, ``mixcl-train``, ``mixcl-test``) imports it;
- for ``python -m mixcl_arch.{dehaze,train,test}`` (Python >= 3.10): ``-m`` imports the parent package while
  ``sys.argv[0]`` is still ``'-m'``, and ``sys.orig_argv`` names the module.
"""
import sys

from .version import __version__  # noqa: F401

#: Modules whose ``main`` parses its arguments before it calls :func:`register`.
CLI_MODULES = ('mixcl_arch.dehaze', 'mixcl_arch.train', 'mixcl_arch.test')

_registering = False


def register():
    """Register everything in BasicSR's registries (idempotent), with the torchvision alias before basicsr.

    Re-entered by the BasicSR import hook (``mixcl_arch_hook.py``) when the first sub-package imports basicsr; that
    call returns at once and the outer one finishes the registration.
    """
    global _registering
    if _registering:
        return
    _registering = True
    try:
        from . import compat  # noqa: F401  (must run before anything imports basicsr)
        from . import archs, data, losses, metrics, models  # noqa: F401
    finally:
        _registering = False


def _cli_registers_later():
    """Whether a command-line front imports the package before parsing its arguments (see the module docstring)."""
    front = sys.modules.get('mixcl_arch_cli')
    if front is not None and front.deferring:
        return True
    orig_argv = getattr(sys, 'orig_argv', None)  # Python >= 3.10
    if sys.argv[:1] != ['-m'] or not orig_argv:
        return False
    module = orig_argv[-len(sys.argv)]  # the argument of -m comes right before the module's own arguments
    return module.split('-m')[-1] in CLI_MODULES


if not _cli_registers_later():
    register()
