"""The one conditioning config: parsed once from an option file's top-level sections, frozen, self-validating.

YAML (every key optional; shown with the defaults)::

    clip:                  # the CLIP prior (mixcl_arch.clip.prior.PRIOR_OPTION_KEYS): model, pretrained, domains, ...
      model: ViT-B-32
      pretrained: openai
    conditioning:
      source: clip         # clip (online) | store (feature store) | oracle (pair CSV domain label) | domain | none
      mode: hard           # primary vector: hard (the reference) | soft
      extra: []            # extra vectors after the primary one: image, <prompt set>[:hard|soft], domain:soft
      fallback: ~          # source clip without CLIP weights: ~ (fail) | none (zero vectors) | <domain>
      domain: ~            # source domain: the domain whose text feature every image gets
      store: ~             # feature store file: per-domain text features (domain, oracle, a domain fallback) and the
                           # per-image features of datasets that name no feature_store of their own
    cliphaze_cond: {}      # CLIPHazeNet's density-map and embedding options (CLIPHazeCondConfig)

A dataset's ``feature_store`` is data (where the stored conditioning of *its* images is), like ``dataroot_lq``; every
other conditioning setting is here. Keys that used to be spread over ``clip:`` and each dataset fail with an error
naming their new place (:data:`MOVED_KEYS`).
"""
import dataclasses

from mixcl_arch.clip.cliphaze_cond import CLIPHazeCondConfig
from mixcl_arch.clip.prior import PRIOR_OPTION_KEYS
from mixcl_arch.conditioning.vectors import COND_MODES, normalize_prompt_sets, parse_extra
from mixcl_arch.utils.options import OptionError, check_choice, check_str

SOURCES = ('clip', 'store', 'oracle', 'domain', 'none')
# old key path -> where the setting lives now ('*' stands for any dataset phase)
MOVED_KEYS = {
    'clip.cond_mode': 'conditioning.mode',
    'clip.cond_extra': 'conditioning.extra',
    'clip.cond_fallback': 'conditioning.fallback',
    'clip.feature_store': 'conditioning.store',
    'datasets.*.cond_source': 'conditioning.source',
    'datasets.*.cond_mode': 'conditioning.mode',
    'datasets.*.cond_extra': 'conditioning.extra',
    'datasets.*.cond_density': 'nothing: the net decides (CLIPHazeNet with a density-guided CAM takes the map)',
    'datasets.*.cond_embedding': 'nothing: the net decides (CLIPHazeNet with an embedding-guided CAM takes it)',
    'datasets.*.cond_dim': 'nothing: the net decides (network_g.text_dim / embed_dim)',
    'datasets.*.cliphaze_cond': 'the top-level cliphaze_cond section',
    'datasets.*.clip': 'the top-level clip section',
    'datasets.*.oracle_domains': 'clip.domains',
}
_KEYS = ('source', 'mode', 'extra', 'fallback', 'domain', 'store')


def _moved(key, new):
    return OptionError(f'{key}: this setting moved to {new} (one conditioning section for the whole run, see '
                       'docs/clip.md "Conditioning options").')


def check_moved_keys(opt):
    """Raise :class:`OptionError` for the first old-style conditioning key in the option dict ``opt``."""
    clip = opt.get('clip') or {}
    for key, new in MOVED_KEYS.items():
        section, _, name = key.rpartition('.')
        if section == 'clip' and isinstance(clip, dict) and name in clip:
            raise _moved(key, new)
    for phase, ds in (opt.get('datasets') or {}).items():
        for key, new in MOVED_KEYS.items():
            if key.startswith('datasets.*.') and isinstance(ds, dict) and key.rpartition('.')[2] in ds:
                raise _moved(f'datasets.{phase}.{key.rpartition(".")[2]}', new)


@dataclasses.dataclass(frozen=True)
class ClipOptions:
    """The ``clip:`` section: keyword arguments of :class:`mixcl_arch.clip.prior.CLIPPrior`, checked by name.

    Attributes:
        items (tuple): (key, value) pairs in file order.
    """
    items: tuple = ()

    def __post_init__(self):
        for key, _ in self.items:
            if key not in PRIOR_OPTION_KEYS:
                raise OptionError(f'clip.{key}: unknown CLIP option; expected one of {", ".join(PRIOR_OPTION_KEYS)}.')

    @classmethod
    def from_dict(cls, opt):
        if opt is not None and not isinstance(opt, dict):
            raise OptionError(f'clip: expected a mapping (key: value lines), got {opt!r}.')
        return cls(tuple((str(k), v) for k, v in (opt or {}).items() if v is not None))

    def as_dict(self):
        """dict: the options (what :func:`mixcl_arch.clip.store.provenance_mismatches` compares with a store)."""
        return dict(self.items)

    def prior_kwargs(self, device):
        """dict: ``CLIPPrior(**kwargs)`` on ``device``."""
        return dict(self.items, device=str(device))


@dataclasses.dataclass(frozen=True)
class ConditioningConfig:
    """Every conditioning setting of a run (module docstring); validated at construction.

    Attributes:
        source (str): 'clip', 'store', 'oracle', 'domain' or 'none'.
        mode (str): 'hard' or 'soft' (primary vector of the (B, K, E) stack).
        extra (tuple[str]): Extra vectors of the stack (:func:`mixcl_arch.conditioning.vectors.parse_extra`).
        fallback (str): Source 'clip' without CLIP weights: 'error', 'none' or a domain name.
        domain (str | None): Source 'domain': the fixed domain.
        store (str | None): Feature store file (per-domain text features; per-image features for datasets without
            their own ``feature_store``).
        clip (ClipOptions): The CLIP prior's options.
        cliphaze (CLIPHazeCondConfig): Options of the density-map and embedding kinds.
    """
    source: str = 'clip'
    mode: str = 'hard'
    extra: tuple = ()
    fallback: str = 'error'
    domain: str | None = None
    store: str | None = None
    clip: ClipOptions = ClipOptions()
    cliphaze: CLIPHazeCondConfig = CLIPHazeCondConfig()

    def __post_init__(self):
        check_choice('conditioning.source', self.source, SOURCES)
        check_choice('conditioning.mode', self.mode, COND_MODES)
        extra = self.extra
        if isinstance(extra, str) or not isinstance(extra, (list, tuple)):
            raise OptionError(f'conditioning.extra: expected a list such as [image, density], got {extra!r}.')
        object.__setattr__(self, 'extra', tuple(str(e) for e in extra))
        prompt_sets = self.clip.as_dict().get('prompt_sets')
        try:
            set_names = list(normalize_prompt_sets(prompt_sets, ['{}'])) if prompt_sets else []
            parse_extra(self.extra, self.mode, set_names=set_names if self.source == 'clip' else None)
        except ValueError as err:
            raise OptionError(f'conditioning.extra: {err}') from None
        if self.fallback is None:
            object.__setattr__(self, 'fallback', 'error')
        check_str('conditioning.fallback', self.fallback)
        for key in ('domain', 'store'):
            check_str(f'conditioning.{key}', getattr(self, key), optional=True)
        if self.source == 'domain' and self.domain is None:
            raise OptionError('conditioning.domain: missing (source domain gives every image the text feature of '
                              'this domain, e.g. outdoor).')
        if self.source != 'domain' and self.domain is not None:
            raise OptionError(f'conditioning.domain: only used with source domain, got source {self.source!r}.')
        needs_text = self.source == 'domain' or self.fallback not in ('error', 'none')
        if needs_text and self.store is None:
            what = f'source domain ({self.domain})' if self.source == 'domain' else f'fallback {self.fallback!r}'
            raise OptionError(f'conditioning.store: missing; {what} takes the domain\'s text feature from a feature '
                              'store (scripts/extract_clip_features.py), or use fallback none.')
        if self.source in ('oracle', 'domain', 'none') and self.extra:
            raise OptionError(f'conditioning.extra: {list(self.extra)} needs CLIP features (source clip or store); '
                              f'source {self.source} gives the primary vector only.')

    @classmethod
    def from_options(cls, opt):
        """Parse an option dict (the whole file): ``conditioning:``, ``clip:``, ``cliphaze_cond:``.

        Raises:
            OptionError: Naming the key and the bad value, or an old-style key and its new place.
        """
        check_moved_keys(opt)
        section = opt.get('conditioning') or {}
        if not isinstance(section, dict):
            raise OptionError(f'conditioning: expected a mapping (key: value lines), got {section!r}.')
        unknown = [k for k in section if k not in _KEYS]
        if unknown:
            raise OptionError(f'conditioning.{unknown[0]}: unknown key; expected one of {", ".join(_KEYS)}.')
        try:
            cliphaze = CLIPHazeCondConfig.from_opt(opt.get('cliphaze_cond'))
        except ValueError as err:
            raise OptionError(str(err)) from None
        values = {k: v for k, v in section.items() if v is not None or k == 'fallback'}
        if 'extra' in values and values['extra'] is None:
            values.pop('extra')
        return cls(clip=ClipOptions.from_dict(opt.get('clip')), cliphaze=cliphaze, **values)

    def replace(self, **changes):
        """A copy with ``changes`` (validated again), e.g. the CLI's ``--cond-fallback``."""
        return dataclasses.replace(self, **changes)
