"""Lazy BasicSR import hook of mixcl_arch, started by ``mixcl_arch_hook.pth`` in site-packages at interpreter start.

BasicSR's own commands (``python -m basicsr.train``, ``python basicsr/train.py`` from a BasicSR checkout,
``torchrun ... basicsr/train.py``) never import this plugin, and ``import basicsr`` 1.4.2 fails on torchvision >= 0.17.
The ``.pth`` line calls :func:`install`, which puts a :class:`BasicsrFinder` first on ``sys.meta_path``. This module
imports only ``os`` and ``sys``: programs that never import ``basicsr`` pay nothing else. When ``basicsr`` is imported,
the finder (one shot: the imports it triggers do not come back to it) wraps BasicSR's loader so that

1. before ``basicsr/__init__.py`` runs, ``mixcl_arch/compat.py`` installs the torchvision alias. It is run from its
   file because importing ``mixcl_arch.compat`` would first run ``mixcl_arch/__init__.py``, which imports basicsr;
2. after it, :func:`mixcl_arch.register` registers the plugin and :func:`mixcl_arch.basicsr_hook.patch_basicsr` applies
   the BasicSR 1.4.2 fixes, also to BasicSR's ``train.py`` / ``test.py`` run as ``__main__``.

``mixcl_arch`` importing ``basicsr`` itself is the same path: step 2 then finds the registration under way, which is
harmless (the outer :func:`mixcl_arch.register` finishes it). A basicsr other than 1.4.x (forks vendored by other
repositories) gets step 1 only and a warning.

Set ``MIXCL_ARCH_NO_BASICSR_HOOK=1`` to turn the hook off.
"""
import os
import sys

OPT_OUT_ENV = 'MIXCL_ARCH_NO_BASICSR_HOOK'


class _PluginLoader:
    """BasicSR's own loader with the torchvision alias before and the plugin after ``basicsr/__init__.py``."""

    def __init__(self, loader, package_dir):
        self.loader = loader
        self.package_dir = package_dir

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        _run_file('mixcl_arch.compat', os.path.join(self.package_dir, 'compat.py'))
        # the module keeps BasicSR's loader (source look-ups, reloads): nothing of the hook stays attached
        module.__loader__ = module.__spec__.loader = self.loader
        self.loader.exec_module(module)
        version = getattr(module, '__version__', '')
        if not version.startswith('1.4.'):
            import warnings
            warnings.warn(f'mixcl_arch: basicsr {version!r} ({module.__file__}) is not BasicSR 1.4.x; the plugin is '
                          f'not loaded into it ({OPT_OUT_ENV}=1 turns the hook off).')
            return
        import mixcl_arch
        mixcl_arch.register()  # archs, datasets, models, losses, metrics (a no-op while the package registers)
        from mixcl_arch.basicsr_hook import patch_basicsr
        patch_basicsr()


def _run_file(name, path):
    from importlib.util import module_from_spec, spec_from_file_location
    spec = spec_from_file_location(name, path)
    spec.loader.exec_module(module_from_spec(spec))


class BasicsrFinder:
    """Meta-path finder that answers only the first ``import basicsr``, with the spec the other finders give."""

    def __init__(self):
        self.fired = False

    def find_spec(self, name, path=None, target=None):
        if name != 'basicsr' or self.fired:
            return None
        self.fired = True  # before the look-ups below, which come back through sys.meta_path
        from importlib.util import find_spec
        spec = find_spec('basicsr')
        plugin = find_spec('mixcl_arch')
        if spec is not None and spec.loader is not None and plugin is not None:
            spec.loader = _PluginLoader(spec.loader, plugin.submodule_search_locations[0])
        return spec


def install():
    """Put a :class:`BasicsrFinder` first on ``sys.meta_path`` unless ``MIXCL_ARCH_NO_BASICSR_HOOK`` is set."""
    if os.environ.get(OPT_OUT_ENV, '') not in ('', '0'):
        return
    if not any(isinstance(finder, BasicsrFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, BasicsrFinder())
