"""mixcl_arch: a BasicSR plugin for CLIP-conditioned image dehazing.

Importing the package registers every arch, dataset, model, loss and metric it has in BasicSR's registries.
"""
# flake8: noqa
from . import compat  # must run before anything imports basicsr

from .archs import *
from .data import *
from .losses import *
from .metrics import *
from .models import *
from .version import __version__
