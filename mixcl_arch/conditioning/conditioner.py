"""One :class:`Conditioner` per source; :func:`build_conditioner` picks it for a net and a config.

A conditioner maps a batch (:class:`CondBatch`: images, and what the dataset knows of them) to what the net takes
besides the image: MixCLDehazeNet's (B, K, E) stack, or CLIPHazeNet's ``{'density': ..., 'embedding': ...}``
keywords (:func:`mixcl_arch.utils.net_call.run_net` feeds either). The training model, the inference restorers and
the benchmarks all use it; :meth:`Conditioner.__call__` also takes a bare image tensor.
"""
import dataclasses
import logging

import torch

from mixcl_arch.conditioning.kinds import net_kinds
from mixcl_arch.utils.options import OptionError

logger = logging.getLogger('mixcl_arch')


@dataclasses.dataclass(frozen=True)
class CondBatch:
    """What a conditioner may use for a batch.

    Attributes:
        images (Tensor): (B, 3, H, W) float in [0, 1].
        keys (tuple[str] | None): Feature-store key of each image (the dataset's ``key``).
        stores (tuple[str] | None): Feature store file of each image (the dataset's ``feature_store``).
        domains (tuple[str] | None): Domain label of each image (the pair CSV's domain column).
        crops (Tensor | None): (B, 7) long crop records (top, left, height, width, hflip, vflip, rot90 count).
    """
    images: torch.Tensor
    keys: tuple | None = None
    stores: tuple | None = None
    domains: tuple | None = None
    crops: torch.Tensor | None = None

    @classmethod
    def from_data(cls, data, images):
        """From a collated dataset batch (keys 'key', 'feature_store', 'domain', 'crop'; each optional)."""
        def strings(key):
            return tuple(str(v) for v in data[key]) if data.get(key) is not None else None

        return cls(images, strings('key'), strings('feature_store'), strings('domain'), data.get('crop'))


class Conditioner:
    """Base of the sources: computes every kind the net takes for a batch.

    Args:
        cfg (ConditioningConfig): Options.
        kinds (list[Kind]): What the net takes (:func:`mixcl_arch.conditioning.kinds.net_kinds`).
        device (torch.device): Where the outputs (and a CLIP model) live.

    Attributes:
        source (str): What the conditioning comes from, for logs and notes.
        notes (list[str]): Messages for the user (fallbacks, stand-ins).
    """
    source = None

    def __init__(self, cfg, kinds, device='cpu'):
        self.cfg, self.kinds, self.device = cfg, list(kinds), torch.device(device)
        self.notes = []

    def compute(self, batch):
        """dict[str, Tensor]: kind name -> tensor for ``batch``."""
        raise NotImplementedError

    @torch.no_grad()
    def __call__(self, batch):
        """Conditioning of ``batch`` (a :class:`CondBatch` or (B, 3, H, W) images in [0, 1]).

        Returns:
            Tensor | dict[str, Tensor]: (B, K, E) float32 for a vector-stack net, else the keyword inputs, on the
            images' device.
        """
        if torch.is_tensor(batch):
            batch = CondBatch(batch)
        out = {name: value.float().to(batch.images.device) for name, value in self.compute(batch).items()}
        return out['cond'] if list(out) == ['cond'] else out


class CLIPConditioner(Conditioner):
    """Online: the frozen CLIP prior on the images (built only when a kind needs it; stand-ins need none).

    Raises:
        mixcl_arch.clip.weights.CLIPWeightsError: Missing CLIP weights (:func:`build_conditioner` turns it into the
            configured fallback or a message).
    """
    source = 'clip'

    def __init__(self, cfg, kinds, device='cpu'):
        super().__init__(cfg, kinds, device)
        self.prior = None
        if any(kind.needs_prior(cfg) for kind in self.kinds):
            from mixcl_arch.clip.prior import CLIPPrior
            self.prior = CLIPPrior(**cfg.clip.prior_kwargs(self.device))
        if self.prior is None:
            self.source = 'online stand-in (NOT CLIP: cliphaze_cond density_source dcp / embedding_source standin)'
            self.notes.append(f'Conditioning from the offline stand-in, {self.source}.')

    def compute(self, batch):
        return {kind.name: kind.online(self.prior, batch, self.cfg) for kind in self.kinds}


class StoreConditioner(Conditioner):
    """Source ``store``: the features written by ``scripts/extract_clip_features.py``, looked up by image key.

    Args:
        stores (Iterable[str]): Store files to load and check now (the datasets' ``feature_store``); others are
            loaded and checked on first use.
    """
    source = 'store'

    def __init__(self, cfg, kinds, device='cpu', stores=()):
        super().__init__(cfg, kinds, device)
        self._stores = {}
        for path in stores:
            self.store(path)

    def store(self, path):
        """The checked :class:`~mixcl_arch.clip.store.FeatureStore` of ``path`` (loaded once)."""
        if path not in self._stores:
            from mixcl_arch.clip.store import FeatureStore
            store = FeatureStore.load(path)
            for kind in self.kinds:
                kind.check_store(store, self.cfg)
            self._stores[path] = store
        return self._stores[path]

    def compute(self, batch):
        paths = set(batch.stores or ([self.cfg.store] if self.cfg.store else []))
        if len(paths) != 1 or batch.keys is None:
            raise ValueError('conditioning.source store needs image keys and one feature store per batch: set the '
                             'dataset\'s feature_store (or conditioning.store); got stores '
                             f'{sorted(paths) or "none"}.')
        store = self.store(paths.pop())
        try:
            rows = store.rows(list(batch.keys))
        except KeyError as err:
            raise ValueError(f'Feature store {store.path}: {err.args[0]}; re-run scripts/extract_clip_features.py '
                             'on the dataset.') from None
        return {kind.name: kind.stored(store, rows, batch, self.cfg) for kind in self.kinds}


class _DomainVectors(Conditioner):
    """Shared by the label-based sources: per-domain text vectors from a store file, or the stand-in."""

    def text_vectors(self, labels, store_path):
        """(B, E) text vectors of ``labels`` from ``store_path`` (None: the crc32-seeded stand-in, NOT CLIP)."""
        stack = next((k for k in self.kinds if k.name == 'cond'), None)
        if stack is None:
            return None
        if store_path is None:
            from mixcl_arch.data.clip_data_util import standin_text_feature
            return torch.stack([standin_text_feature(d, stack.cond_dim) for d in labels])
        if store_path not in self._feats:
            from mixcl_arch.clip.store import load_domain_text_features
            self._feats[store_path] = load_domain_text_features(store_path)
        feats = self._feats[store_path]
        unknown = sorted(set(labels) - set(feats))
        if unknown:
            raise ValueError(f'Domain(s) {unknown} have no text feature in {store_path} (domains: {sorted(feats)}).')
        vectors = torch.stack([feats[d] for d in labels])
        if vectors.shape[1] != stack.cond_dim:
            raise ValueError(f'{store_path}: text features of {vectors.shape[1]} values, the network takes '
                             f'{stack.cond_dim}.')
        return vectors

    def _from_labels(self, labels, batch, store_path):
        vectors = None if labels is None else self.text_vectors(labels, store_path)
        return {kind.name: kind.from_domains(labels, vectors, batch, self.cfg) for kind in self.kinds}


class OracleConditioner(_DomainVectors):
    """Source ``oracle``: each image's domain label (pair CSV) -> that domain's text feature (``conditioning.store``,
    else the image's feature store, else the stand-in); never looks at the image."""
    source = 'oracle'

    def __init__(self, cfg, kinds, device='cpu'):
        super().__init__(cfg, kinds, device)
        self._feats = {}

    def compute(self, batch):
        if batch.domains is None:
            raise ValueError('conditioning.source oracle needs a domain label per image: give the dataset a meta_file '
                             '(pair CSV with a domain column, scripts/make_haze_pairs.py).')
        store = self.cfg.store or (batch.stores[0] if batch.stores else None)
        return self._from_labels(list(batch.domains), batch, store)


class DomainConditioner(_DomainVectors):
    """Source ``domain`` (and a domain fallback): every image gets the text feature of one domain.

    Args:
        domain (str): The domain (default ``conditioning.domain``).
    """

    def __init__(self, cfg, kinds, device='cpu', domain=None):
        super().__init__(cfg, kinds, device)
        self.domain = domain or cfg.domain
        self._feats = {}
        self.source = f'domain:{self.domain}'
        self.text_vectors([self.domain], cfg.store)  # a missing file or domain fails now

    def compute(self, batch):
        return self._from_labels([self.domain] * batch.images.shape[0], batch, self.cfg.store)


class NoneConditioner(Conditioner):
    """Source ``none``: zero vectors (the net runs without its prior; a density map needs the DCP stand-in)."""
    source = 'none'

    def compute(self, batch):
        return {kind.name: kind.from_domains(None, None, batch, self.cfg) for kind in self.kinds}


def build_conditioner(cfg, net, device='cpu', stores=(), online=False):
    """The conditioner of ``net`` under ``cfg``, or None for an unconditioned net.

    Args:
        cfg (ConditioningConfig): Options.
        net (nn.Module): The bare network (what it takes decides the kinds).
        device (str | torch.device): Device of the outputs and of a CLIP model.
        stores (Iterable[str]): Feature store files the run will read (checked now for source store).
        online (bool): Images come without dataset records (CLI, benchmarks): sources store and oracle become
            clip, i.e. computed as the store was.

    Returns:
        Conditioner | None

    Raises:
        RuntimeError: CLIP weights missing with ``conditioning.fallback`` error; the message says how to proceed.
        ValueError: A store or file that does not fit the options or the net; with ``online``, a stand-in embedding
            without ``cliphaze_cond.standin_domain`` (:class:`OptionError`).
    """
    from mixcl_arch.clip.weights import CLIPWeightsError
    kinds = net_kinds(net, cfg)
    if not kinds:
        return None
    source = 'clip' if online and cfg.source in ('store', 'oracle') else cfg.source
    standin = cfg.cliphaze.embedding_source == 'standin' and any(kind.name == 'embedding' for kind in kinds)
    if online and source == 'clip' and standin and cfg.cliphaze.standin_domain is None:
        raise OptionError('cliphaze_cond.embedding_source standin (the default of density_source: dcp) needs '
                          'cliphaze_cond.standin_domain (--standin-domain in the CLI): bare images carry no domain '
                          'label; give the label whose stand-in vector the network was trained with, e.g. indoor.')
    if source == 'store':
        return StoreConditioner(cfg, kinds, device, stores)
    if source == 'oracle':
        return OracleConditioner(cfg, kinds, device)
    if source == 'domain':
        return DomainConditioner(cfg, kinds, device)
    if source == 'none':
        cond = NoneConditioner(cfg, kinds, device)
        cond.notes.append('conditioning.source none: ZERO conditioning, the network runs without its CLIP prior.')
        return cond
    try:
        return CLIPConditioner(cfg, kinds, device)
    except CLIPWeightsError as err:
        reason = str(err).splitlines()[0]
        if cfg.fallback == 'error':
            raise RuntimeError(
                f'CLIP weights are missing, so the conditioning cannot be computed: {err}\nSet clip.pretrained to the '
                'weights (CLI: --clip-pretrained FILE), or choose conditioning.fallback (CLI: --cond-fallback): a '
                'domain such as outdoor, with conditioning.store holding the per-domain text features (CLI: '
                '--feature-store FILE), or none (zero vectors; worse results). CLIPHazeNet can use the offline '
                'stand-in instead: cliphaze_cond.density_source dcp (CLI: --density-source dcp --standin-domain '
                'DOMAIN).') from err
    if cfg.fallback == 'none':
        cond = NoneConditioner(cfg, kinds, device)
        cond.notes.append(f'CLIP weights are missing ({reason}). Using ZERO conditioning (conditioning.fallback '
                          'none): the network runs without its CLIP prior.')
        return cond
    cond = DomainConditioner(cfg, kinds, device, domain=cfg.fallback)
    cond.notes.append(f'CLIP weights are missing ({reason}). Using the fixed text feature of domain '
                      f'{cfg.fallback!r} from {cfg.store} for every image (conditioning.fallback).')
    stack = next((k for k in kinds if k.name == 'cond'), None)
    if stack is not None and stack.num_cond > 1:
        cond.notes.append(f'The network takes {stack.num_cond} conditioning vectors; vectors 2..{stack.num_cond} '
                          'need CLIP and are set to zero.')
    return cond
