import importlib
from os import path as osp

from basicsr.utils import scandir

# automatically scan and import model modules for registry
# scan all the files that end with '_model.py' under the models folder
_folder = osp.dirname(osp.abspath(__file__))
_filenames = [osp.splitext(osp.basename(v))[0] for v in scandir(_folder) if v.endswith('_model.py')]
# import all the model modules
_modules = [importlib.import_module(f'mixcl_arch.models.{file_name}') for file_name in _filenames]
