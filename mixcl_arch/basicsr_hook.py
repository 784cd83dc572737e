"""What the BasicSR import hook does once ``basicsr`` is imported, so that BasicSR's own commands run this plugin.

The hook itself (``mixcl_arch_hook.py``, started from ``mixcl_arch_hook.pth``) is stdlib-only and calls
:func:`patch_basicsr` after ``import basicsr``. It applies :func:`mixcl_arch.utils.basicsr_fixes.apply_basicsr_fixes`
to the module ``basicsr.train``, but ``python -m basicsr.train`` and ``python basicsr/train.py`` execute BasicSR's file
as ``__main__``: a second copy of the module, with its own globals, that the fixes never reach. BasicSR's
``__main__`` block also passes ``root_path`` = the folder above its own file (site-packages for a pip install), and
``train_pipeline`` sets ``opt['root_path']`` to it after ``parse_options``.

The one name such a ``__main__`` takes from elsewhere at run time is ``parse_options``: its
``from basicsr.utils.options import parse_options`` runs after the package ``basicsr`` (and so this patch) is
imported. :func:`patch_basicsr` therefore replaces ``basicsr.utils.options.parse_options``. Called by BasicSR's own
``train_pipeline`` / ``test_pipeline`` with BasicSR's own location as root, the replacement

- uses the current working directory as root instead (``experiments/``, ``results/``, ``tb_logger/``);
- puts the fixed ``load_resume_state`` and ``CUDAPrefetcher`` into the caller's globals (``__main__``); the resume
  fix first restores ``opt['root_path']``, which ``train_pipeline`` has just overwritten.

Every call also rewrites ``--local-rank``. It wraps the ``parse_options`` that ``apply_basicsr_fixes`` installed
(safe YAML loading, option checks, ``clip:`` propagation, run-folder lock), which then sees the corrected root. Modules
that bound ``parse_options`` before (``basicsr.train``, ``basicsr.test``, imported by ``basicsr/__init__.py``, used by
``mixcl_arch/train.py``) keep their own, which ``apply_basicsr_fixes`` wraps the same way.
"""
import functools
import os
import sys
from os import path as osp

from mixcl_arch.utils.basicsr_fixes import (apply_basicsr_fixes, cuda_prefetcher_or_cpu, load_resume_state,
                                            normalize_argv)

ENTRY_POINTS = ('train.py', 'test.py')


def is_basicsr_entry_point(filename, root_path):
    """Whether ``filename`` is BasicSR's own ``basicsr/{train,test}.py`` and ``root_path`` the folder above it.

    Args:
        filename (str): Source file of the function that called ``parse_options``.
        root_path (str): The root it passed.

    Returns:
        bool: True for BasicSR's ``__main__`` blocks, False for plugins passing their own root (HAT, Real-ESRGAN).
    """
    path = osp.realpath(filename)
    package_dir = osp.dirname(path)
    return (osp.basename(path) in ENTRY_POINTS and osp.basename(package_dir) == 'basicsr'
            and osp.realpath(root_path) == osp.dirname(package_dir))


def load_resume_state_under(root_path, opt):
    """The fixed ``load_resume_state`` for BasicSR's ``__main__``, after setting ``opt['root_path']`` back."""
    opt['root_path'] = root_path
    return load_resume_state(opt)


def entry_point_parse_options(parse_options):
    """Wrap BasicSR's ``parse_options`` for BasicSR's own entry points (see the module docstring).

    Args:
        parse_options (callable): ``basicsr.utils.options.parse_options`` as ``apply_basicsr_fixes`` left it.

    Returns:
        callable: Same signature, ``(opt, args)``.
    """

    @functools.wraps(parse_options)
    def wrapped(root_path, is_train=True):
        normalize_argv()
        caller = sys._getframe(1)
        if is_basicsr_entry_point(caller.f_code.co_filename, root_path):
            root_path = os.getcwd()
            names = caller.f_globals
            if 'load_resume_state' in names:
                names['load_resume_state'] = functools.partial(load_resume_state_under, root_path)
            if 'CUDAPrefetcher' in names:
                names['CUDAPrefetcher'] = cuda_prefetcher_or_cpu
        return parse_options(root_path, is_train=is_train)

    wrapped.fixes_entry_points = True
    return wrapped


def patch_basicsr():
    """Apply the BasicSR fixes, then wrap ``basicsr.utils.options.parse_options`` once more (idempotent)."""
    import basicsr.utils.options
    apply_basicsr_fixes()
    if not getattr(basicsr.utils.options.parse_options, 'fixes_entry_points', False):
        basicsr.utils.options.parse_options = entry_point_parse_options(basicsr.utils.options.parse_options)
