"""What the classic baselines (DCP, DehazeNet recovery) share: input checks, luma, the atmospheric light, and
:class:`BaselineParams`, the base of their frozen, self-validating option dataclasses.

Options are parsed once, at the boundary, into a :class:`BaselineParams` subclass
(:class:`mixcl_arch.baselines.dcp.DCPParams`, :class:`mixcl_arch.baselines.dehazenet.DehazeNetRecoveryParams`):

- ``from_strings(dict[str, str])``: ``KEY=VALUE`` text of the CLI's ``--param`` and the benchmark's method spec
  (booleans true/false, 1/0, yes/no, on/off; numbers; ``~`` / none / null / empty for None);
- ``from_mapping(dict)``: typed values of a YAML section; a string where a number or a boolean is required is an error;
- both resolve ``preset`` (where the class has presets) and reject unknown keys, then call the constructor, whose
  ``__post_init__`` checks every type and range with the project's option checks (:mod:`mixcl_arch.utils.options`:
  integral floats are integers, never booleans or strings). Errors are
  :class:`~mixcl_arch.utils.options.OptionError` naming the option, the value and what is allowed, e.g.
  ``dcp.omega: expected a number > 0 and <= 1, got 'abc' (str).``

The two baselines use the same names for the same ideas, declared once in :class:`RecoveryParams`: ``top_ratio``,
``atmo_mode`` (:data:`ATMO_MODES`), ``a_min``, ``refine``, ``gf_radius`` / ``gf_window`` / ``gf_border`` /
``gf_eps`` (the guided filter of :mod:`mixcl_arch.baselines.guided_filter`), ``t0`` and ``clamp``.
"""
import dataclasses
import functools
import math
import types
import typing

import torch

from mixcl_arch.baselines.guided_filter import BORDERS
from mixcl_arch.utils.options import OptionError, check_bool, check_choice, check_int, check_number

LUMA = (0.299, 0.587, 0.114)
# how A is taken from the candidate (haziest) pixels; 'brightest' ranks them by the baseline's brightness measure
ATMO_MODES = ('brightest', 'brightest_grey', 'mean', 'channel_max')
# spellings from before the two baselines shared ATMO_MODES; still accepted, stored as the new name
ATMO_MODE_ALIASES = {'max': 'brightest', 'color': 'brightest', 'grey': 'brightest_grey',
                     'channel_max_top': 'channel_max'}
TRUE_WORDS = ('true', '1', 'yes', 'on')
FALSE_WORDS = ('false', '0', 'no', 'off')
NONE_WORDS = ('~', 'none', 'null', '')


def check_image(x, name='x'):
    """Raise ValueError unless ``x`` is a float (B, 3, H, W) tensor."""
    if not torch.is_tensor(x) or x.dim() != 4 or x.shape[1] != 3:
        shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
        raise ValueError(f'{name} must be a (B, 3, H, W) RGB tensor in [0, 1], got {shape}.')
    if not x.is_floating_point():
        raise ValueError(f'{name} must be a float tensor in [0, 1], got dtype {x.dtype}.')


def grey(x):
    """(B, 3, H, W) RGB -> (B, 1, H, W) luma (ITU-R BT.601 weights)."""
    return (x * x.new_tensor(LUMA)[None, :, None, None]).sum(dim=1, keepdim=True)


def atmospheric_light(x, score, top_ratio, mode, brightness='sum', largest=True):
    """Atmospheric light A from the haziest pixels: the ``top_ratio`` pixels ranked by ``score``.

    Args:
        x (Tensor): (B, 3, H, W) hazy image in [0, 1].
        score (Tensor): (B, 1, H, W) ranking of the candidates (DCP: the dark channel, highest first; DehazeNet: the
            transmission, lowest first).
        top_ratio (float): Fraction of pixels kept (at least one).
        mode (str): One of :data:`ATMO_MODES` (or an alias): 'brightest': the RGB of the brightest candidate;
            'brightest_grey': its grey value (BT.601 luma) on all three channels; 'mean': the candidates' mean
            colour; 'channel_max': each channel's maximum over the candidates (R, G, B may come from different
            pixels).
        brightness (str): How 'brightest' ranks: 'sum' (R+G+B, the DCP paper) or 'luma' (BT.601, DehazeNet).
        largest (bool): Keep the highest ``score`` (True) or the lowest.

    Returns:
        Tensor: (B, 3) atmospheric light.
    """
    mode = check_atmo_mode('atmo_mode', mode)
    b, c, h, w = x.shape
    k = max(1, int(math.floor(h * w * float(top_ratio))))
    idx = score.reshape(b, h * w).topk(k, dim=1, largest=largest).indices  # (B, k)
    flat = x.reshape(b, c, h * w)
    if mode in ('mean', 'channel_max'):
        pix = flat.gather(2, idx[:, None, :].expand(b, c, k))  # (B, 3, k)
        return pix.mean(dim=2) if mode == 'mean' else pix.amax(dim=2)
    luma = grey(x).reshape(b, h * w)
    bright = (x.sum(dim=1).reshape(b, h * w) if brightness == 'sum' else luma).gather(1, idx)  # (B, k)
    pick = idx.gather(1, bright.argmax(dim=1, keepdim=True))  # (B, 1) flat index of the brightest candidate
    if mode == 'brightest_grey':
        return luma.gather(1, pick).expand(b, c).contiguous()
    return flat.gather(2, pick[:, None, :].expand(b, c, 1))[..., 0]


# ------------------------------------------------------------------------------------------------------ options
def check_atmo_mode(key, value):
    """One of :data:`ATMO_MODES`; an old spelling of :data:`ATMO_MODE_ALIASES` is mapped to its name."""
    if isinstance(value, str) and value in ATMO_MODE_ALIASES:
        return ATMO_MODE_ALIASES[value]
    return check_choice(key, value, ATMO_MODES)


check_fraction = functools.partial(check_number, gt=0, le=1)  # (0, 1]
check_non_negative_int = functools.partial(check_int, ge=0)
check_positive = functools.partial(check_number, gt=0)


def option(default, check):
    """A :class:`BaselineParams` field: its default and its check ``check(key, value) -> value`` (raises
    :class:`~mixcl_arch.utils.options.OptionError`)."""
    return dataclasses.field(default=default, metadata={'check': check})


def parse_text(key, text, hint, check):
    """A ``KEY=VALUE`` value -> the checked Python value of an option annotated ``hint`` (bool, int, float, str,
    X | None): true/false, 1/0, yes/no, on/off; ``~`` / none / null / empty for None.

    Args:
        key (str): Key path in errors, e.g. 'dcp.omega'.
        text (str): The value as text.
        hint (type): The option's annotation.
        check (callable): The option's check ``check(key, value) -> value``.

    Raises:
        OptionError: Text that does not read as that type or a value out of range, from ``check`` (which names the
            key, the value and what is allowed).
    """
    try:
        value = _read_text(text, hint)
    except ValueError:
        value = text  # never a valid bool / int / float: check rejects it, naming what is allowed
    return check(key, value)


def _read_text(text, hint):
    typ, optional = hint, False
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        typ, optional = args[0], len(args) < len(typing.get_args(hint))
    low = text.strip().lower()
    if optional and low in NONE_WORDS:
        return None
    if typ is bool:
        if low in TRUE_WORDS + FALSE_WORDS:
            return low in TRUE_WORDS
        raise ValueError(f'{text!r} is not a boolean')
    return typ(text.strip())  # int('1.5') and float('abc') raise ValueError


@dataclasses.dataclass(frozen=True)
class BaselineParams:
    """Base of the baselines' option dataclasses: every field's check runs in ``__post_init__``; ``from_strings`` and
    ``from_mapping`` parse text and YAML into the same instance.

    A subclass declares its options as annotated fields made by :func:`option` (bool, int, float, str or
    ``X | None``), sets ``SECTION`` (the name in errors, e.g. 'dcp') and optionally ``PRESETS`` ({name: {field:
    value}}) and :meth:`check` for rules between options.

    Args:
        where (str | None): Init-only: the key path in errors (e.g. 'val.recovery'); default ``SECTION``. Not a field
            (not compared, not in ``dataclasses.asdict``).

    Raises:
        OptionError: (a ValueError) A value of the wrong type or out of range, naming the option, value and range.
    """
    _: dataclasses.KW_ONLY  # options are positional in declaration order; ``where`` only by name
    where: dataclasses.InitVar[str | None] = None

    SECTION: typing.ClassVar[str] = 'options'
    PRESETS: typing.ClassVar[dict] = {}

    def __post_init__(self, where):
        where = where or self.SECTION
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, f.metadata['check'](f'{where}.{f.name}', getattr(self, f.name)))
        self.check(where)

    def check(self, where):
        """Rules between options (subclasses); raise OptionError with keys under ``where``."""

    @classmethod
    def keys(cls):
        """list[str]: The option names, in declaration order."""
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_mapping(cls, opt, where=None, extra_keys=()):
        """Build from typed values (a YAML section, keyword arguments).

        Args:
            opt (dict | None): Options; ``preset`` (where the class has presets) picks a named set that the other
                keys override.
            where (str | None): Key path in errors (e.g. 'val.recovery'); default ``SECTION``.
            extra_keys (tuple[str]): Other keys the caller accepts, listed in the unknown-key error.

        Raises:
            OptionError: Unknown keys or preset, values of the wrong type or out of range.
        """
        where = where or cls.SECTION
        values = dict(opt or {})
        preset = values.pop('preset', None) if cls.PRESETS else None
        unknown = sorted(set(values) - set(cls.keys()))
        if unknown:
            allowed = cls.keys() + (['preset'] if cls.PRESETS else []) + list(extra_keys)
            raise OptionError(f'{where}: unknown key(s) {unknown}; allowed: {allowed}.')
        if preset is not None:
            check_choice(f'{where}.preset', preset, tuple(cls.PRESETS))
        return cls(**{**cls.PRESETS.get(preset, {}), **values}, where=where)

    @classmethod
    def parse_strings(cls, strings, where=None):
        """``KEY=VALUE`` text -> typed values (keys that are not options, e.g. ``preset``, are kept as they are).

        Raises:
            OptionError: Text that does not read as the option's type (the option's own check names it).
        """
        hints = typing.get_type_hints(cls)
        checks = {f.name: f.metadata['check'] for f in dataclasses.fields(cls)}
        return {key: parse_text(f'{where or cls.SECTION}.{key}', text, hints[key], checks[key]) if key in checks
                else text for key, text in strings.items()}

    @classmethod
    def from_strings(cls, strings, where=None, extra_keys=()):
        """Build from ``KEY=VALUE`` text (the CLI's ``--param``, a benchmark method spec): :meth:`parse_strings`,
        then :meth:`from_mapping`.

        Raises:
            OptionError: Unknown keys or preset, unreadable text, values out of range.
        """
        return cls.from_mapping(cls.parse_strings(strings, where), where, extra_keys)


@dataclasses.dataclass(frozen=True)
class RecoveryParams(BaselineParams):
    """The options both baselines have, for the same steps of the atmospheric scattering model: A from the haziest
    pixels, the guided-filter refinement of t, and J = (I - A) / max(t, t0) + A. Same names, checks and meaning in
    both; the defaults are the DCP paper's (a subclass overrides its own).

    Attributes:
        top_ratio (float): Fraction in (0, 1] of the haziest pixels searched for A.
        atmo_mode (str): How A is taken from them, one of :data:`ATMO_MODES` (old spellings of
            :data:`ATMO_MODE_ALIASES` are mapped), see :func:`atmospheric_light`.
        a_min (float): Lower bound in (0, 1] on A.
        refine (bool): Refine t with the guided filter (guide: grey input).
        gf_radius (int): Guided filter radius >= 0: (2r+1)x(2r+1) windows.
        gf_window (int | None): Guided filter box size k >= 1 instead of ``gf_radius``: kxk boxes with OpenCV's anchor
            k // 2 (pixel i sees i - k // 2 .. i + (k - 1) // 2), see :mod:`mixcl_arch.baselines.guided_filter`.
        gf_border (str): Guided filter border: 'clip' (clipped windows) or 'reflect101' (as cv2.boxFilter).
        gf_eps (float): Guided filter regularisation > 0.
        t0 (float): Lower bound in (0, 1) on t in the recovery.
        clamp (bool): Clamp J to [0, 1].
    """
    top_ratio: float = option(0.001, check_fraction)
    atmo_mode: str = option('brightest', check_atmo_mode)
    a_min: float = option(1e-3, check_fraction)
    refine: bool = option(True, check_bool)
    gf_radius: int = option(60, check_non_negative_int)
    gf_window: int | None = option(None, functools.partial(check_int, optional=True, ge=1))
    gf_border: str = option('clip', functools.partial(check_choice, choices=BORDERS))
    gf_eps: float = option(1e-4, check_positive)
    t0: float = option(0.1, functools.partial(check_number, gt=0, lt=1))
    clamp: bool = option(True, check_bool)


def params_from(cls, params, options, extra_keys=()):
    """The ``cls`` instance of a restorer's ``params`` argument or of its typed keyword ``options``.

    Args:
        cls (type): A :class:`BaselineParams` subclass.
        params (BaselineParams | None): A ready instance, or None to build one from ``options``.
        options (dict): Typed options (:meth:`BaselineParams.from_mapping`).
        extra_keys (tuple[str]): The restorer's other arguments, listed in the unknown-key error.

    Raises:
        ValueError: Both given, or ``params`` of another type; bad options.
    """
    if params is None:
        return cls.from_mapping(options, extra_keys=extra_keys)
    if options or not isinstance(params, cls):
        raise ValueError(f'Give either params (a {cls.__name__}) or options as keywords, got params={params!r} and '
                         f'{sorted(options)}.')
    return params
