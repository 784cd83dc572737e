"""Option files: the project's one safe YAML loader, and the checks a run's options pass before any work starts.

Loading (:func:`safe_load`, :func:`load_yaml_file`, :func:`ordered_yaml`): ``yaml.SafeLoader`` semantics, so a tag
such as ``!!python/object/apply:os.system`` is an error naming the file, never code that runs, with BasicSR's
conventions kept: mappings are ``OrderedDict`` in file order, ``!!float 5e3`` and ``~`` work as before. Two
differences from BasicSR's ``ordered_yaml`` loader, both errors BasicSR would only hit later:

- an unquoted exponent number (``lr: 2e-4``, ``1e5``) is a float as in YAML 1.2 (YAML 1.1, hence BasicSR, reads it
  as the *string* ``'2e-4'``, which crashed deep inside the optimizer); a *quoted* ``'2e-4'`` stays a string and is
  rejected by the checks below, so a number is never silently parsed out of a string;
- a key repeated in one mapping is an error (YAML 1.1 silently keeps the last one).

Checking (:func:`check_options`): BasicSR's parsed option dict goes into frozen dataclasses (:class:`RunOptions` and
its sections) that check every typed key they know at construction; unknown keys pass (BasicSR and its plugins read
many). Errors are :class:`OptionError` naming the key path, the value and the allowed range, e.g.
``train.optim_g.lr: expected a number > 0, got 'abc' (str)``. Integer keys accept integral floats (``!!float 5e3``,
as BasicSR's own YAMLs write ``val_freq``), never booleans or strings. The ``conditioning:`` / ``clip:`` /
``cliphaze_cond:`` sections go through :meth:`mixcl_arch.conditioning.config.ConditioningConfig.from_options`, so a
bad or old-style conditioning key fails here too. The code after the check keeps using BasicSR's dict (BasicSR needs
it); the check is the boundary.
"""
import dataclasses
import functools
import math
import os
import re
from collections import OrderedDict

import yaml


class OptionError(ValueError):
    """An option file or value that cannot be used; the message names the file or key, the value and what is allowed."""


# ------------------------------------------------------------------------------------------------------------ loading
_EXPONENT_FLOAT = re.compile(r'^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$')


class SafeOrderedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` with OrderedDict mappings, YAML 1.2 exponent floats and no duplicate keys (module doc)."""

    def get_single_data(self):
        try:
            return super().get_single_data()
        except yaml.YAMLError as err:
            raise OptionError(f'{self.name}: not a valid YAML data file: {err}') from None


def _construct_ordered_mapping(loader, node):
    loader.flatten_mapping(node)  # merge keys (<<) as SafeLoader
    pairs = loader.construct_pairs(node)
    seen = set()
    for key_node, (key, _) in zip((k for k, _ in node.value), pairs):
        if key in seen:
            raise yaml.constructor.ConstructorError('while constructing a mapping', node.start_mark,
                                                    f'found the key {key!r} twice', key_node.start_mark)
        seen.add(key)
    return OrderedDict(pairs)


def _reject_tag(loader, node):
    raise yaml.constructor.ConstructorError(
        None, None, f'the tag {node.tag!r} is not allowed: YAML data files hold mappings, lists, strings, numbers, '
        'booleans and ~ only (no Python objects, so loading never runs code)', node.start_mark)


SafeOrderedLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_ordered_mapping)
SafeOrderedLoader.add_constructor(None, _reject_tag)
SafeOrderedLoader.add_implicit_resolver('tag:yaml.org,2002:float', _EXPONENT_FLOAT, list('-+0123456789'))


class OptionFileLoader(SafeOrderedLoader):
    """:class:`SafeOrderedLoader` for option files, whose document must be a mapping (``key: value`` lines)."""

    def get_single_data(self):
        data = super().get_single_data()
        if not isinstance(data, dict):
            raise OptionError(f'{self.name}: an option file is a YAML mapping (key: value lines), got '
                              f'{type(data).__name__} {data!r:.80}.')
        return data


class OrderedDumper(yaml.SafeDumper):
    """``yaml.SafeDumper`` writing OrderedDicts as plain mappings in their order (BasicSR's dumper convention), and
    quoting strings such as ``'2e-4'`` that :class:`SafeOrderedLoader` would read back as numbers."""


OrderedDumper.add_representer(OrderedDict, lambda dumper, data: dumper.represent_dict(data.items()))
OrderedDumper.add_implicit_resolver('tag:yaml.org,2002:float', _EXPONENT_FLOAT, list('-+0123456789'))


def ordered_yaml():
    """Drop-in for ``basicsr.utils.options.ordered_yaml``: the safe (Loader, Dumper) pair for option files."""
    return OptionFileLoader, OrderedDumper


def safe_load(stream):
    """Parse YAML text (str or file object) with :class:`SafeOrderedLoader`; ``yaml.safe_load`` for this project.

    Raises:
        OptionError: Invalid YAML or a disallowed tag, with the stream's name and position.
    """
    return yaml.load(stream, Loader=SafeOrderedLoader)


def load_yaml_file(path):
    """Load a YAML data file (UTF-8, a byte-order mark is accepted) with :class:`SafeOrderedLoader`.

    Raises:
        OptionError: Unreadable, invalid YAML or a disallowed tag; the message names ``path``.
    """
    try:
        with open(path, encoding='utf-8-sig') as f:
            return safe_load(f)
    except (OSError, UnicodeDecodeError) as err:
        raise OptionError(f'{path}: cannot read the YAML file: {err}') from None


# --------------------------------------------------------------------------------------------------- value checks
def _got(value):
    return f'{value!r} ({type(value).__name__})' if isinstance(value, str) else repr(value)


def _bounds(gt=None, ge=None, lt=None, le=None):
    parts = [f'{op} {v}' for op, v in (('>', gt), ('>=', ge), ('<', lt), ('<=', le)) if v is not None]
    return ' ' + ' and '.join(parts) if parts else ''


def _in_bounds(value, gt=None, ge=None, lt=None, le=None):
    return not ((gt is not None and value <= gt) or (ge is not None and value < ge) or (lt is not None and value >= lt)
                or (le is not None and value > le))


def check_int(key, value, optional=False, **bounds):
    """An integer within ``bounds`` (gt/ge/lt/le); integral floats (``!!float 5e3``) become ints; None if optional."""
    if value is None and optional:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not _in_bounds(value, **bounds):
        raise OptionError(f'{key}: expected an integer{_bounds(**bounds)}, got {_got(value)}.')
    return value


def check_number(key, value, optional=False, **bounds):
    """A finite int or float within ``bounds`` (gt/ge/lt/le), returned as float; None if optional."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not _in_bounds(value, **bounds):
        hint = ''
        if isinstance(value, str) and re.fullmatch(r'\s*[-+]?[0-9._]+(?:[eE][-+]?[0-9]+)?\s*', value):
            hint = f' (a quoted string: write the number without quotes, e.g. {value.strip()})'
        raise OptionError(f'{key}: expected a number{_bounds(**bounds)}, got {_got(value)}{hint}.')
    return float(value)


def check_bool(key, value, optional=False):
    """``true`` or ``false`` (YAML booleans, not strings); None if optional."""
    if value is None and optional:
        return None
    if not isinstance(value, bool):
        raise OptionError(f'{key}: expected true or false, got {_got(value)}.')
    return value


def check_str(key, value, optional=False):
    """A non-empty string; None if optional."""
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value:
        raise OptionError(f'{key}: expected a non-empty string, got {_got(value)}.')
    return value


def check_choice(key, value, choices):
    """One of ``choices`` (compared with ==, so None can be a choice)."""
    if value not in choices:
        raise OptionError(f'{key}: expected one of {", ".join(map(repr, choices))}, got {_got(value)}.')
    return value


def check_list(key, value, item, length=None):
    """A non-empty list (tuple returned) whose items pass ``item(key[i], v)``; exactly ``length`` items if given."""
    if not isinstance(value, (list, tuple)) or not value or (length is not None and len(value) != length):
        size = f'{length} items' if length is not None else 'items'
        raise OptionError(f'{key}: expected a list of {size}, got {_got(value)}.')
    return tuple(item(f'{key}[{i}]', v) for i, v in enumerate(value))


def check_name(key, value):
    """A run name: one folder name under experiments/ or results/ (no path separators, not . or ..)."""
    value = check_str(key, value)
    if value in ('.', '..') or '/' in value or os.sep in value or '\0' in value:
        raise OptionError(f'{key}: expected a folder name (no / or \\, not . or ..), got {_got(value)}.')
    return value


def check_compile(key, value):
    """``train.compile``: a bool or a torch.compile mode string."""
    if not isinstance(value, (bool, str)) or value == '':
        raise OptionError(f'{key}: expected true, false or a torch.compile mode (e.g. max-autotune), got '
                          f'{_got(value)}.')
    return value


def _mapping(key, value):
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise OptionError(f'{key}: expected a mapping (key: value lines), got {_got(value)}.')
    return value


# --------------------------------------------------------------------------------------------------- the sections
_ABSENT = object()


def _key(where, name):
    return f'{where}.{name}' if where else name


def _opt(check, required=False, **kwargs):
    """A checked section field; absent keys stay None unless ``required``."""
    return dataclasses.field(default=_ABSENT, metadata={'check': functools.partial(check, **kwargs),
                                                         'required': required})


@dataclasses.dataclass(frozen=True)
class _Section:
    """Base of the option sections: every field's check runs at construction.

    Attributes:
        where (str): The section's key path in the option file ('' for the top level), for messages.
    """
    where: str

    def __post_init__(self):
        for f in dataclasses.fields(self):
            if 'check' not in f.metadata:
                continue
            key, value = _key(self.where, f.name), getattr(self, f.name)
            if value is _ABSENT:
                if f.metadata['required']:
                    raise OptionError(f'{key}: missing (required).')
                value = None
            else:
                value = f.metadata['check'](key, value)
            object.__setattr__(self, f.name, value)

    @classmethod
    def from_dict(cls, where, opt):
        """Build the section at key path ``where`` from BasicSR's dict ``opt`` (its checked keys only)."""
        opt = _mapping(where, opt)
        names = [f.name for f in dataclasses.fields(cls) if 'check' in f.metadata]
        return cls(where, **{name: opt[name] for name in names if name in opt})


def check_section(key, value, cls, optional=False):
    """``cls.from_dict(key, value)``: a nested section as a field check; None (``key: ~``) if optional."""
    if value is None and optional:
        return None
    return cls.from_dict(key, value)


@dataclasses.dataclass(frozen=True)
class OptimizerOptions(_Section):
    """``train.optim_g``: ``type`` and ``lr`` are required; other keys go to the torch optimizer unchecked."""
    type: str = _opt(check_str, required=True)
    lr: float = _opt(check_number, required=True, gt=0)
    weight_decay: float = _opt(check_number, ge=0)
    betas: tuple = _opt(check_list, length=2, item=functools.partial(check_number, ge=0, lt=1))
    eps: float = _opt(check_number, gt=0)
    momentum: float = _opt(check_number, ge=0)


@dataclasses.dataclass(frozen=True)
class SchedulerOptions(_Section):
    """``train.scheduler``: BasicSR's CosineAnnealingRestartLR / MultiStepRestartLR keys."""
    type: str = _opt(check_str, required=True)
    periods: tuple = _opt(check_list, item=functools.partial(check_int, ge=1))
    restart_weights: tuple = _opt(check_list, item=functools.partial(check_number, ge=0))
    eta_min: float = _opt(check_number, ge=0)
    milestones: tuple = _opt(check_list, item=functools.partial(check_int, ge=1))
    gamma: float = _opt(check_number, gt=0)

    def __post_init__(self):
        super().__post_init__()
        if self.periods is not None and self.restart_weights is not None \
                and len(self.periods) != len(self.restart_weights):
            raise OptionError(f'{self.where}: periods {list(self.periods)} and restart_weights '
                              f'{list(self.restart_weights)} must have the same length.')


@dataclasses.dataclass(frozen=True)
class LossOptions(_Section):
    """A ``train.*_opt`` loss (``pixel_opt``, ``perceptual_opt``, ``cr_opt``...)."""
    type: str = _opt(check_str, required=True)
    loss_weight: float = _opt(check_number, ge=0)
    reduction: str = _opt(check_choice, choices=('none', 'mean', 'sum'))


def _check_losses(key, value):
    train_key = key.rpartition('.')[0]  # the losses sit directly under train: (train.pixel_opt), not train.losses
    return tuple(LossOptions.from_dict(_key(train_key, name), opt) for name, opt in value.items() if opt is not None)


@dataclasses.dataclass(frozen=True)
class TrainOptions(_Section):
    """``train``: iterations, EMA, AMP, compile, ``optim_g``, ``scheduler`` and the ``*_opt`` losses."""
    total_iter: int = _opt(check_int, required=True, ge=1)
    warmup_iter: int = _opt(check_int, ge=-1)
    ema_decay: float = _opt(check_number, ge=0, lt=1)
    amp: str = _opt(check_choice, choices=(None, 'none', 'bf16', 'fp16'))
    compile: object = _opt(check_compile)
    compile_on_cpu: bool = _opt(check_bool)
    optim_g: OptimizerOptions = _opt(check_section, required=True, cls=OptimizerOptions)
    scheduler: SchedulerOptions = _opt(check_section, cls=SchedulerOptions)
    losses: tuple = _opt(_check_losses)

    @classmethod
    def from_dict(cls, where, opt):
        opt = _mapping(where, opt)
        return super().from_dict(where, dict(opt, losses={k: v for k, v in opt.items() if k.endswith('_opt')}))


@dataclasses.dataclass(frozen=True)
class RecoveryTileOptions(_Section):
    """``val.recovery`` tiling (DehazeNetModel); the recovery parameters are checked by the model."""
    tile: int = _opt(check_int, optional=True, ge=0)
    tile_overlap: int = _opt(check_int, ge=0)


@dataclasses.dataclass(frozen=True)
class TileOptions(_Section):
    """``val.tile`` (or HAT's top-level ``tile``): tiled validation / test of MixCLDehazeModel; each ``tile_size``
    tile is run with ``tile_pad`` pixels of context on every side (:func:`mixcl_arch.utils.tiling.hat_tile_args`)."""
    tile_size: int = _opt(check_int, required=True, gt=0)
    tile_pad: int = _opt(check_int, required=True, gt=0)

    def __post_init__(self):
        super().__post_init__()
        if self.tile_pad >= self.tile_size:
            raise OptionError(f'{self.where}.tile_pad: expected an integer < tile_size ({self.tile_size}), got '
                              f'{self.tile_pad}.')


@dataclasses.dataclass(frozen=True)
class ValOptions(_Section):
    """``val``: frequency (required when training), image saving, tiling, recovery tiling."""
    val_freq: int = _opt(check_int, ge=1)
    save_img: bool = _opt(check_bool)
    pbar: bool = _opt(check_bool)
    suffix: str = _opt(check_str, optional=True)
    recovery: RecoveryTileOptions = _opt(check_section, cls=RecoveryTileOptions)
    tile: TileOptions = _opt(check_section, optional=True, cls=TileOptions)


@dataclasses.dataclass(frozen=True)
class LoggerOptions(_Section):
    """``logger``: both frequencies are required (BasicSR divides by them every iteration)."""
    print_freq: int = _opt(check_int, required=True, ge=1)
    save_checkpoint_freq: int = _opt(check_int, required=True, ge=1)
    use_tb_logger: bool = _opt(check_bool)


@dataclasses.dataclass(frozen=True)
class DatasetOptions(_Section):
    """``datasets.<phase>``: crop and loader settings (the dataset class checks its own paths and extras)."""
    name: str = _opt(check_str, required=True)
    type: str = _opt(check_str, required=True)
    gt_size: int = _opt(check_int, ge=1)
    patch_size: int = _opt(check_int, ge=1)
    patches_per_image: int = _opt(check_int, ge=1)
    batch_size_per_gpu: int = _opt(check_int, ge=1)
    num_worker_per_gpu: int = _opt(check_int, ge=0)
    dataset_enlarge_ratio: int = _opt(check_int, ge=1)
    use_hflip: bool = _opt(check_bool)
    use_rot: bool = _opt(check_bool)
    pin_memory: bool = _opt(check_bool)
    cache_images: bool = _opt(check_bool)
    prefetch_mode: str = _opt(check_choice, choices=(None, 'cpu', 'cuda'))


def _check_datasets(key, value):
    value = _mapping(key, value)
    if not value:
        raise OptionError(f'{key}: expected at least one dataset (train, val, test_1...), got none.')
    return tuple(DatasetOptions.from_dict(_key(key, phase), opt) for phase, opt in value.items())


@dataclasses.dataclass(frozen=True)
class PathOptions(_Section):
    """``path``: weights to load, their loading options and the checkpoint format."""
    pretrain_network_g: str = _opt(check_str, optional=True)
    param_key_g: str = _opt(check_str, optional=True)
    strict_load_g: bool = _opt(check_bool)
    resume_state: str = _opt(check_str, optional=True)
    allow_unsafe_pickle: bool = _opt(check_bool)
    save_format: str = _opt(check_choice, choices=('pth', 'safetensors'))


@dataclasses.dataclass(frozen=True)
class RunOptions(_Section):
    """A whole training or test run, as BasicSR's ``parse_options`` returns it (``is_train`` set by BasicSR)."""
    name: str = _opt(check_name, required=True)
    model_type: str = _opt(check_str, required=True)
    is_train: bool = _opt(check_bool, required=True)
    num_gpu: object = _opt(check_int, required=True, ge=0)
    manual_seed: int = _opt(check_int, optional=True)
    scale: int = _opt(check_int, ge=1)
    datasets: tuple = _opt(_check_datasets, required=True)
    path: PathOptions = _opt(check_section, cls=PathOptions)
    train: TrainOptions = _opt(check_section, cls=TrainOptions)
    val: ValOptions = _opt(check_section, cls=ValOptions)
    logger: LoggerOptions = _opt(check_section, cls=LoggerOptions)
    tile: TileOptions = _opt(check_section, optional=True, cls=TileOptions)

    @classmethod
    def from_dict(cls, where, opt):
        opt = _mapping('options', opt)
        if opt.get('num_gpu') == 'auto':  # before BasicSR's parse_options replaced it by the device count
            opt = dict(opt, num_gpu=0)
        if opt.get('is_train'):
            missing = [k for k in ('train', 'logger') if opt.get(k) is None]
            if missing:
                raise OptionError(f'{missing[0]}: missing (required for training).')
        return super().from_dict(where, opt)

    def __post_init__(self):
        super().__post_init__()
        if self.is_train:
            phases = [ds.where.split('.', 1)[1] for ds in self.datasets]
            if 'train' not in phases:
                raise OptionError(f'datasets: training needs a datasets.train section, got {phases}.')
            train_ds = self.datasets[phases.index('train')]
            for key in ('batch_size_per_gpu', 'num_worker_per_gpu'):
                if getattr(train_ds, key) is None:
                    raise OptionError(f'{train_ds.where}.{key}: missing (required for training).')
            if self.val is not None and self.val.val_freq is None:
                raise OptionError('val.val_freq: missing (required for training with a val section).')


def check_options(opt):
    """Check BasicSR's parsed option dict before any data loading or model building.

    Args:
        opt (dict): What ``basicsr.utils.options.parse_options`` returns (``is_train`` set).

    Returns:
        RunOptions: The checked, frozen view (``opt`` itself is left unchanged for BasicSR).

    Raises:
        OptionError: Naming the first bad key, its value and the allowed range, or an old-style conditioning key and
            its new place.
    """
    # lazy: the conditioning config builds on this module's checks (OptionError, check_choice, ...)
    from mixcl_arch.conditioning.config import ConditioningConfig
    run = RunOptions.from_dict('', opt)
    ConditioningConfig.from_options(opt)
    return run
