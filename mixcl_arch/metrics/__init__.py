import importlib
from os import path as osp

from basicsr.utils import scandir

# automatically scan and import metric modules for registry
# scan all the files that end with '_metric.py' under the metrics folder
_folder = osp.dirname(osp.abspath(__file__))
_filenames = [osp.splitext(osp.basename(v))[0] for v in scandir(_folder) if v.endswith('_metric.py')]
# import all the metric modules
_modules = [importlib.import_module(f'mixcl_arch.metrics.{file_name}') for file_name in _filenames]
