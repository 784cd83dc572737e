import importlib
from os import path as osp

from basicsr.utils import scandir

# automatically scan and import arch modules for registry
# scan all the files that end with '_arch.py' under the archs folder
_folder = osp.dirname(osp.abspath(__file__))
_filenames = [osp.splitext(osp.basename(v))[0] for v in scandir(_folder) if v.endswith('_arch.py')]
# import all the arch modules
_modules = [importlib.import_module(f'mixcl_arch.archs.{file_name}') for file_name in _filenames]
