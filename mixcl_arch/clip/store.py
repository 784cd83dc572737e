"""The CLIP feature store: conditioning of every image of a dataset, computed once, with its provenance.

One ``torch.save`` file (written atomically) holding a plain dict::

    {'format': 'mixcl_clip_features', 'version': 1,
     'meta': provenance (model, pretrained tag or file name + sha256, quick_gelu, model_cfg, domains, templates,
             prompt_sets, embed_dim, logit_scale, open_clip_version),
     'class_text': {'domain': (D, E), '<set>': (C, E)},   # normalised per-class text features
     'names': [N image names],                             # relative hazy path without extension, '/'-separated
     'probs': (N, D), 'image_emb': (N, E), 'set_probs': {'<set>': (N, C)},   # float32
     'spatial': {'<kind>': {'meta': provenance, 'maps': [N (1, h, w) float16]}}}  # optional, e.g. 'density'

A spatial kind (CLIPHaze's haze-density map, :mod:`mixcl_arch.clip.cliphaze_cond`) holds one map per image at
reduced resolution (its ``meta`` says how it was made, e.g. ``store_scale``); stores without one load as before.

``text_hard`` / ``text_soft`` of an image are not duplicated on disk: they are rebuilt exactly from its probabilities
and the class text features (hard = row of the most probable class, soft = ``probs @ class_text``), the same
computation as :class:`~mixcl_arch.clip.prior.CLIPPrior`, so :meth:`FeatureStore.get` returns them bit-identical.
"""
import os

import torch

from mixcl_arch.utils.checkpoint import atomic_torch_save

from mixcl_arch.conditioning.vectors import PRIMARY_SET, hard_soft

__all__ = ['FeatureStore', 'STORE_FORMAT', 'STORE_VERSION', 'load_domain_text_features', 'provenance_mismatches']

STORE_FORMAT = 'mixcl_clip_features'
STORE_VERSION = 1


def _as_list(value):
    if value is None:
        return None
    return [value] if isinstance(value, str) else [str(v) for v in value]


def _load_file(path):
    """``torch.load`` of a store file (tensors and plain containers only); any failure names the file."""
    try:
        return torch.load(path, map_location='cpu', weights_only=True)
    except Exception as err:  # UnpicklingError for foreign objects, zip errors for truncated files, ...
        reason = str(err).strip().splitlines()[0] if str(err).strip() else ''
        raise ValueError(f'Feature store {path} cannot be read ({type(err).__name__}: {reason}); it is not a file '
                         'written by scripts/extract_clip_features.py (only tensors, lists and dicts are loaded, '
                         'never other Python objects): re-run that script.') from err


def _options_quick_gelu(opt, meta):
    """The QuickGELU setting ``CLIPPrior`` would use with the options ``opt`` (None: cannot tell without the weights).

    An explicit ``quick_gelu`` wins; unset, it is True for a TorchScript file, False for another file and the tag's
    open_clip setting for a tag (``ViT-B-32`` + ``openai``: True), as ``CLIPPrior.__init__`` decides.
    """
    if opt.get('quick_gelu') is not None:
        return bool(opt['quick_gelu'])
    if opt.get('torchscript'):
        return True
    pre = opt.get('pretrained')
    if pre is None:
        return None
    if os.path.isfile(os.path.expanduser(str(pre))):
        return False
    if meta.get('pretrained_kind') != 'tag':
        return None
    import open_clip
    model = str(opt.get('model') or meta.get('model')).replace('/', '-')
    return bool(open_clip.get_pretrained_cfg(model, str(pre)).get('quick_gelu', False))


def provenance_mismatches(meta, clip_opt, embed_dim=None):
    """Differences between a store's provenance and the CLIP options that should have produced it.

    Args:
        meta (dict): Store provenance.
        clip_opt (dict | None): YAML ``clip:`` options (model, pretrained, domains, templates, prompt_sets,
            quick_gelu, ...). Keys that are not set are not checked, except ``quick_gelu``, whose default follows
            from ``pretrained`` / ``torchscript`` (see :func:`_options_quick_gelu`).
        embed_dim (int | None): Conditioning width the network expects.

    Returns:
        list[str]: Human-readable differences (empty: compatible).
    """
    from mixcl_arch.conditioning.vectors import normalize_prompt_sets

    diffs = []
    opt = dict(clip_opt or {})
    if opt.get('model') is not None and str(opt['model']).replace('/', '-') != meta.get('model'):
        diffs.append(f"model: store {meta.get('model')!r}, options {opt['model']!r}")
    pre = opt.get('pretrained')
    if pre is not None:
        pre = str(pre)
        path = os.path.expanduser(pre)
        if meta.get('pretrained_kind') == 'file' and os.path.isfile(path):
            from .weights import file_sha256
            if file_sha256(path) != meta.get('pretrained_sha256'):
                diffs.append(f"pretrained: store made from a file with sha256 {str(meta.get('pretrained_sha256'))[:12]}"
                             f"..., options' file {path} differs")
        elif meta.get('pretrained_kind') == 'tag' and not os.path.isfile(path) and pre != meta.get('pretrained'):
            diffs.append(f"pretrained: store tag {meta.get('pretrained')!r}, options {pre!r}")
        elif meta.get('pretrained_kind') == 'file' and not os.path.isfile(path) and \
                os.path.basename(path) != meta.get('pretrained'):
            diffs.append(f"pretrained: store file {meta.get('pretrained')!r}, options {pre!r} (not found here)")
    for key in ('domains', 'templates'):
        if opt.get(key) is not None and _as_list(opt[key]) != list(meta.get(key) or []):
            diffs.append(f'{key}: store {meta.get(key)}, options {_as_list(opt[key])}')
    if opt.get('prompt_sets'):
        want = normalize_prompt_sets(opt['prompt_sets'], _as_list(opt.get('templates')) or meta.get('templates'))
        have = meta.get('prompt_sets') or {}
        for name, spec in want.items():
            if have.get(name) != spec:
                diffs.append(f'prompt_sets.{name}: store {have.get(name)}, options {spec}')
    quick_gelu = _options_quick_gelu(opt, meta)
    if quick_gelu is not None and meta.get('quick_gelu') is not None and quick_gelu != bool(meta['quick_gelu']):
        diffs.append(f"quick_gelu: store {meta['quick_gelu']}, options {quick_gelu} (QuickGELU changes every feature; "
                     'OpenAI weights in a Hugging Face .bin / state dict need quick_gelu: true)')
    if opt.get('model_cfg') is not None and meta.get('model_cfg') is not None and opt['model_cfg'] != meta['model_cfg']:
        diffs.append('model_cfg differs from the one the store was made with')
    if embed_dim is not None and int(embed_dim) != int(meta.get('embed_dim', -1)):
        diffs.append(f"embed dim: store {meta.get('embed_dim')}, expected {embed_dim}")
    return diffs


class FeatureStore:
    """In-memory feature store (see the module docstring for the file layout).

    Args:
        meta (dict): Provenance (``CLIPPrior.provenance()``).
        class_text (dict[str, Tensor]): 'domain' -> (D, E) and one (C, E) per extra prompt set.
    """

    def __init__(self, meta, class_text):
        self.meta = dict(meta)
        self.class_text = {k: v.detach().float().cpu() for k, v in class_text.items()}
        if PRIMARY_SET not in self.class_text:
            raise ValueError("class_text needs the primary 'domain' features.")
        self.names = []
        self.index = {}
        self._chunks = []
        self._probs = torch.zeros(0, self.class_text[PRIMARY_SET].shape[0])
        self._image_emb = torch.zeros(0, self.embed_dim)
        self._set_probs = {k: torch.zeros(0, v.shape[0]) for k, v in self.class_text.items() if k != PRIMARY_SET}
        self.spatial_meta = {}  # kind -> provenance of its maps
        self._spatial = {}  # kind -> list of (1, h, w) float16 maps in row order

    # ------------------------------------------------------------------------------------------------ properties
    @property
    def embed_dim(self):
        return int(self.class_text[PRIMARY_SET].shape[1])

    @property
    def domains(self):
        return list(self.meta.get('domains') or [])

    @property
    def prompt_set_names(self):
        return [k for k in self.class_text if k != PRIMARY_SET]

    @property
    def domain_text(self):
        """Tensor: (D, E) normalised text feature per domain."""
        return self.class_text[PRIMARY_SET]

    def domain_text_features(self):
        """dict[str, Tensor]: domain name -> (E,) text feature."""
        return {d: self.domain_text[i] for i, d in enumerate(self.domains)}

    def __len__(self):
        return len(self.index)

    def __contains__(self, name):
        return name in self.index

    # ---------------------------------------------------------------------------------------------- build / io
    @classmethod
    def from_prior(cls, prior):
        """Empty store for the outputs of ``prior`` (a :class:`~mixcl_arch.clip.prior.CLIPPrior`)."""
        return cls(prior.provenance(), prior.class_text)

    def add_spatial_kind(self, kind, meta):
        """Declare a spatial kind (one map per image, given to every :meth:`add`) on an empty store."""
        if len(self) or self._chunks:
            raise ValueError(f'Spatial kind {kind!r} can only be added to an empty feature store.')
        self.spatial_meta[str(kind)] = dict(meta)
        self._spatial[str(kind)] = []
        return self

    def add(self, names, out, spatial=None):
        """Append the prior outputs of a batch.

        Args:
            names (list[str]): Keys (:func:`~mixcl_arch.utils.image_io.image_key`), none already in the store.
            out (dict): ``CLIPPrior`` output with 'probs' (B, D), 'image_emb' (B, E) and '<set>_probs'.
            spatial (dict | None): kind -> list of B (1, h, w) maps, for every declared spatial kind (stored fp16).

        Raises:
            ValueError: Row count mismatch, a name that is already stored, or missing / misshaped maps.
        """
        if len(names) != out['probs'].shape[0]:
            raise ValueError(f"{len(names)} names for {out['probs'].shape[0]} feature rows.")
        spatial = dict(spatial or {})
        bad = [k for k, m in spatial.items() if len(m) != len(names) or any(x.dim() != 3 or x.shape[0] != 1 for x in m)]
        if set(spatial) != set(self._spatial) or bad:
            raise ValueError(f'Spatial maps {sorted(spatial)} for {len(names)} names: every kind of '
                             f'{sorted(self._spatial)} needs one (1, h, w) map per name.')
        dup = [n for n in names if n in self.index]
        if dup or len(set(names)) != len(names):
            raise ValueError(f'Names already in the feature store or repeated: {(dup or list(names))[:5]}')
        self._chunks.append({'names': list(names), 'probs': out['probs'].detach().float().cpu(),
                             'image_emb': out['image_emb'].detach().float().cpu(),
                             'set_probs': {k: out[f'{k}_probs'].detach().float().cpu() for k in self._set_probs},
                             'spatial': {k: [x.detach().to('cpu', torch.float16) for x in m]
                                         for k, m in spatial.items()}})
        for n in names:
            self.index[n] = -1  # final row assigned by _consolidate
        return self

    def _consolidate(self):
        if not self._chunks:
            return
        chunks, self._chunks = self._chunks, []
        self.names = self.names + [n for c in chunks for n in c['names']]
        self._probs = torch.cat([self._probs] + [c['probs'] for c in chunks])
        self._image_emb = torch.cat([self._image_emb] + [c['image_emb'] for c in chunks])
        self._set_probs = {k: torch.cat([v] + [c['set_probs'][k] for c in chunks]) for k, v in self._set_probs.items()}
        for k, maps in self._spatial.items():
            maps.extend(x for c in chunks for x in c['spatial'][k])
        self.index = {n: i for i, n in enumerate(self.names)}

    def state(self):
        """The dict written to disk."""
        self._consolidate()
        return {'format': STORE_FORMAT, 'version': STORE_VERSION, 'meta': self.meta, 'class_text': self.class_text,
                'names': list(self.names), 'probs': self._probs, 'image_emb': self._image_emb,
                'set_probs': dict(self._set_probs),
                'spatial': {k: {'meta': self.spatial_meta[k], 'maps': list(m)} for k, m in self._spatial.items()}}

    def save(self, path):
        """Write atomically (temporary file in the same folder, fsync, os.replace)."""
        atomic_torch_save(self.state(), path)

    @classmethod
    def load(cls, path):
        """Read a store written by :meth:`save`.

        Raises:
            FileNotFoundError: Missing file.
            ValueError: Not a feature store, another version, or inconsistent sizes.
        """
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f'Feature store not found: {path} '
                                    '(write it with scripts/extract_clip_features.py).')
        data = _load_file(path)
        if not isinstance(data, dict) or data.get('format') != STORE_FORMAT:
            raise ValueError(f'{path} is not a CLIP feature store (written by scripts/extract_clip_features.py).')
        if data.get('version') != STORE_VERSION:
            raise ValueError(f"{path}: feature store version {data.get('version')}, this code reads {STORE_VERSION}.")
        store = cls(data['meta'], data['class_text'])
        n = len(data['names'])
        spatial = data.get('spatial') or {}  # stores written before spatial kinds existed have none
        sizes = [data['probs'].shape[0], data['image_emb'].shape[0]] + [v.shape[0] for v in data['set_probs'].values()]
        sizes += [len(v['maps']) for v in spatial.values()]
        if any(s != n for s in sizes) or set(data['set_probs']) != set(store._set_probs):
            raise ValueError(f'{path}: inconsistent feature store ({n} names, rows {sizes}); re-extract it.')
        store.names = list(data['names'])
        store.index = {name: i for i, name in enumerate(store.names)}
        store._probs, store._image_emb = data['probs'].float(), data['image_emb'].float()
        store._set_probs = {k: v.float() for k, v in data['set_probs'].items()}
        store.spatial_meta = {k: dict(v['meta']) for k, v in spatial.items()}
        store._spatial = {k: list(v['maps']) for k, v in spatial.items()}
        store.path = path
        return store

    # ----------------------------------------------------------------------------------------------- lookup
    def rows(self, names):
        """Row indices of ``names``.

        Raises:
            KeyError: Lists how many names are missing and the first few.
        """
        self._consolidate()
        missing = [n for n in names if n not in self.index]
        if missing:
            raise KeyError(f'{len(missing)} image(s) not in the feature store, e.g. {missing[:5]}')
        return torch.tensor([self.index[n] for n in names], dtype=torch.long)

    def get_rows(self, rows):
        """Conditioning outputs for store rows, the same keys as ``CLIPPrior`` returns.

        Args:
            rows (Tensor): (B,) long.

        Returns:
            dict[str, Tensor]: 'probs' (B, D), 'text_hard', 'text_soft', 'image_emb' (B, E), per set '<set>_probs',
            '<set>_text_hard', '<set>_text_soft'.
        """
        self._consolidate()
        probs = self._probs[rows]
        hard, soft = hard_soft(probs, self.domain_text)
        out = {'probs': probs, 'text_hard': hard, 'text_soft': soft, 'image_emb': self._image_emb[rows]}
        for k, v in self._set_probs.items():
            p = v[rows]
            out[f'{k}_probs'] = p
            out[f'{k}_text_hard'], out[f'{k}_text_soft'] = hard_soft(p, self.class_text[k])
        return out

    def get_spatial(self, kind, row):
        """(1, h, w) float32 map of spatial ``kind`` at store row ``row`` (KeyError names the kinds there are)."""
        self._consolidate()
        if kind not in self._spatial:
            raise KeyError(f"Feature store {getattr(self, 'path', '')} has no {kind!r} maps (has: "
                           f'{sorted(self._spatial)}); re-run scripts/extract_clip_features.py with --density.')
        return self._spatial[kind][int(row)].float()

    def get(self, name):
        """Conditioning outputs of one image (as :meth:`get_rows`, without the batch dimension)."""
        return {k: v[0] for k, v in self.get_rows(self.rows([name])).items()}

    def summary(self):
        """dict: image count, images per predicted domain, mean confidence (max probability)."""
        self._consolidate()
        if not len(self.names):
            return {'images': 0, 'per_domain': {d: 0 for d in self.domains}, 'mean_confidence': None}
        conf, pred = self._probs.max(dim=1)
        counts = torch.bincount(pred, minlength=len(self.domains)).tolist()
        out = {'images': len(self.names), 'per_domain': dict(zip(self.domains, counts)),
               'mean_confidence': round(float(conf.mean()), 4)}
        for k, v in self._set_probs.items():
            classes = self.meta['prompt_sets'][k]['classes']
            out[f'per_{k}'] = dict(zip(classes, torch.bincount(v.argmax(1), minlength=len(classes)).tolist()))
        return out

    def check(self, clip_opt=None, embed_dim=None, path=None):
        """Raise ValueError when the store does not match the CLIP options (see :func:`provenance_mismatches`)."""
        diffs = provenance_mismatches(self.meta, clip_opt, embed_dim)
        if diffs:
            raise ValueError(f"Feature store {path or getattr(self, 'path', '')} does not match the CLIP options: "
                             + '; '.join(diffs) + '. Re-run scripts/extract_clip_features.py with these options.')


def load_domain_text_features(path):
    """Per-domain text features from a feature store file.

    Also accepts a minimal hand-made file ``{'domain_text': {domain: (E,)}}`` or ``{'domain_text': (D, E),
    'domains': [...]}`` (e.g. a stand-in written without CLIP).

    Returns:
        dict[str, Tensor]: domain -> (E,) float32 text feature.

    Raises:
        FileNotFoundError: Missing file.
        ValueError: A file without per-domain text features.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f'Feature store not found: {path}')
    data = _load_file(path)
    if isinstance(data, dict) and data.get('format') == STORE_FORMAT:
        return FeatureStore.load(path).domain_text_features()
    feats = data.get('domain_text') if isinstance(data, dict) else None
    if isinstance(feats, torch.Tensor):
        domains = data.get('domains') or (data.get('meta') or {}).get('domains')
        if not domains or len(domains) != feats.shape[0]:
            raise ValueError(f'{path}: domain_text of shape {tuple(feats.shape)} without a matching `domains` list.')
        feats = {d: feats[i] for i, d in enumerate(domains)}
    if not isinstance(feats, dict) or not feats:
        raise ValueError(f'{path}: no per-domain text features (expected a feature store from '
                         'scripts/extract_clip_features.py or a dict with `domain_text`).')
    return {str(k): torch.as_tensor(v, dtype=torch.float32).reshape(-1) for k, v in feats.items()}
