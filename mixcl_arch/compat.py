"""The one place where mixcl_arch makes ``import basicsr`` (1.4.2) work on current torchvision.

BasicSR 1.4.2 (the last PyPI release, 2022) does ``from torchvision.transforms.functional_tensor import
rgb_to_grayscale`` in ``basicsr/data/degradations.py``. torchvision 0.17 removed that private module, so
``import basicsr`` fails with ModuleNotFoundError on any current torchvision. We register a small alias module
before BasicSR is imported; it forwards to the public ``torchvision.transforms.functional``. This module must run
before anything imports basicsr: ``mixcl_arch/__init__.py`` imports it first, and the BasicSR import hook
(``mixcl_arch_hook.py``) runs this file on its own, outside the package, when another program imports basicsr first.
So it must stay self-contained: no imports from ``mixcl_arch``, idempotent.

The other 1.4.2 flaws (resume on torch >= 2.6 and on CPU, experiments root) live in BasicSR functions, not in
imports: ``mixcl_arch/utils/basicsr_fixes.py`` and ``mixcl_arch/basicsr_hook.py`` fix them.
"""
import sys
import types


def _alias_functional_tensor():
    name = 'torchvision.transforms.functional_tensor'
    if name in sys.modules:
        return
    try:
        import torchvision.transforms.functional_tensor  # noqa: F401  (old torchvision: nothing to do)
        return
    except ImportError:
        pass
    import torchvision.transforms.functional as tf
    shim = types.ModuleType(name)
    shim.rgb_to_grayscale = tf.rgb_to_grayscale
    shim.__doc__ = 'Alias created by mixcl_arch.compat for BasicSR 1.4.2 on torchvision >= 0.17.'
    sys.modules[name] = shim


_alias_functional_tensor()
