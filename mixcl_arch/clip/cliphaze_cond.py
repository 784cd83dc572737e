"""CLIPHaze's two conditioning inputs: a zero-shot haze-density map and an image embedding (one home, both routes).

CLIPHaze (arXiv 2408.12317) guides its aggregation module explicitly by a *zero-shot haze-density map estimated with
CLIP* and implicitly by a *high-quality image embedding without degradation information*. The authors' code is
unpublished; this is our design of both, from the paper's description.

Density map, ``density_source: clip`` (:func:`clip_density`):

1. the hazy image is resized (antialiased bicubic) so that its short side is ``short_side`` pixels (default 448 = 2 x
   the 224 CLIP input: a 224 crop sees about half the short side, the map gets 3 crop rows, and the cost and the
   field of view of a crop do not depend on the image resolution; ``short_side: null`` keeps the native size, then
   an image smaller than ``crop`` is enlarged to it);
2. square ``crop`` x ``crop`` windows every ``stride`` pixels (the last window of a row / column is moved back to end
   at the border, so every pixel is covered) are scored, all crops of the batch in CLIP batches of ``crop_batch``,
   each through the prior's own eval transform (resized to the model's input size: any open_clip model works);
3. P(hazy) of a crop = softmax(``logit_scale`` * cosine) over two classes: the hazy and the clear prompt ensembles.
   A class feature is the normalised mean over ``scenes`` of the normalised template mean
   (:meth:`~mixcl_arch.clip.prior.CLIPPrior.encode_classes`) of its templates, e.g. "a photo of a foggy {}" x
   ["scene", "room", "street", "landscape"];
4. each pixel gets the mean P(hazy) of the crops that contain it (overlap averaging), the map is resized back to the
   input size (bilinear) and normalised to [0, 1] (``normalize: minmax`` per image, the paper's "normalised map";
   a constant map is kept as it is; ``normalize: none`` keeps the probabilities, which are already in [0, 1] and
   keep the global haze level that min-max removes).

Density map, ``density_source: dcp`` (:func:`dcp_density`) -- **NOT CLIP**, the offline stand-in: 1 - t with t the
refined transmission of the project's dark channel prior (:class:`mixcl_arch.baselines.dcp.DCPRestorer`, options
``dcp: {preset: ..., patch_radius: ..., ...}``).

Embedding (``embedding_source``, default 'clip' for the CLIP route and 'standin' for the DCP route):

* 'clip': the L2-normalised CLIP image embedding of the *hazy* input (the prior's whole-image transform). CLIPHaze's
  "embedding without degradation information" is approximated by it: CLIP's image embedding mostly encodes content,
  but it is not degradation-free;
* 'standin': NOT CLIP, the demo's oracle stand-in (``standin_text_feature(domain)``: a unit vector seeded by crc32 of
  the domain name) of the image's domain label (pair CSV), or ``standin_domain``;
* a hook: :func:`register_embedding_source` adds a source, e.g. the content embedding of a degradation-aware CLIP such
  as DA-CLIP (its ``encode_image(x, control=True)`` returns the content and the degradation features; register a
  function returning the first), selected by ``embedding_source: <name>``.

Storage: :func:`to_store_resolution` area-averages a map over ``store_scale`` x ``store_scale`` blocks (default 8,
stored in fp16 by :class:`~mixcl_arch.clip.store.FeatureStore`); block (i, j) is the mean of pixels
[i*s, (i+1)*s) x [j*s, (j+1)*s) (partial border blocks: of their valid pixels), i.e. a sample centred on pixel
(i + 0.5) * s - 0.5, the convention of bilinear resizing with ``align_corners=False``. :func:`crop_density` cuts the
part that belongs to an image crop out of a stored map.

Used through :mod:`mixcl_arch.conditioning.kinds` (``Density``, ``Embedding``): the conditioner of the model, the CLI
and ``scripts/extract_clip_features.py``.
"""
import dataclasses
import math
import weakref

import torch
import torch.nn.functional as F

from .prior import LOGIT_SCALE

__all__ = ['CLIPHazeCondConfig', 'DENSITY_SOURCES', 'NORMALIZE_MODES', 'EMBEDDING_SOURCES', 'HAZY_TEMPLATES',
           'CLEAR_TEMPLATES', 'SCENES', 'register_embedding_source', 'compute_density',
           'clip_density', 'dcp_density', 'crop_grid', 'haze_text_features', 'to_store_resolution', 'crop_density',
           'density_mismatches', 'standin_provenance']

DENSITY_SOURCES = ('clip', 'dcp')
NORMALIZE_MODES = ('minmax', 'none')
HAZY_TEMPLATES = ('a photo of a foggy {}', 'a photo of a {} in thick haze', 'a hazy photo of a {}',
                  'a photo of a {} covered in dense fog')
CLEAR_TEMPLATES = ('a clear photo of a {}', 'a photo of a {} on a clear day', 'a sharp, haze-free photo of a {}')
SCENES = ('scene', 'room', 'street', 'landscape')
EMBEDDING_SOURCES = {}
# provenance keys that decide the stored map (per source) and the embedding; checked when a store is used
_CLIP_KEYS = ('crop', 'stride', 'short_side', 'hazy_templates', 'clear_templates', 'scenes', 'logit_scale',
              'normalize')
_COMMON_KEYS = ('density_source', 'embedding_source', 'store_scale')
_TEXT_CACHE = weakref.WeakKeyDictionary()  # prior -> {(scenes, hazy, clear): (2, E)}: encoded once per prior


def _strings(value, key):
    items = (value, ) if isinstance(value, str) else tuple(value or ())
    if not items or not all(isinstance(v, str) and v for v in items):
        raise ValueError(f'{key} needs a non-empty list of strings, got {value!r}.')
    return items


@dataclasses.dataclass(frozen=True)
class CLIPHazeCondConfig:
    """Options of CLIPHaze's conditioning (YAML section ``cliphaze_cond:``), validated at construction.

    Attributes:
        density_source (str): 'clip' (zero-shot map) or 'dcp' (1 - t of the dark channel prior, NOT CLIP).
        crop (int): Crop side in pixels of the resized image (224: the CLIP input size, no further scaling).
        stride (int): Crop step (112: half overlap).
        short_side (int | None): Short side the image is resized to before cropping (None: native size).
        hazy_templates (tuple[str]): Hazy prompt templates with one ``{}``.
        clear_templates (tuple[str]): Clear prompt templates with one ``{}``.
        scenes (tuple[str]): Scene words filled into every template.
        logit_scale (float): Softmax temperature (100: OpenAI CLIP's learned scale, as everywhere in the project).
        normalize (str): 'minmax' (per image) or 'none'.
        crop_batch (int): Crops per CLIP forward.
        embedding_source (str | None): 'clip', 'standin' or a registered hook; None: 'clip' for the CLIP route,
            'standin' for the DCP route.
        standin_domain (str | None): Domain of the stand-in embedding for images without a domain label.
        embed_dim (int): Embedding length of the stand-in (512, as ViT-B/32).
        dcp (tuple): (key, value) pairs for :class:`~mixcl_arch.baselines.dcp.DCPRestorer` ('preset' and its
            options); a dict is accepted.
        store_scale (int): Down-scaling factor of the stored map (8: 1/8 resolution).
    """
    density_source: str = 'clip'
    crop: int = 224
    stride: int = 112
    short_side: int | None = 448
    hazy_templates: tuple = HAZY_TEMPLATES
    clear_templates: tuple = CLEAR_TEMPLATES
    scenes: tuple = SCENES
    logit_scale: float = LOGIT_SCALE
    normalize: str = 'minmax'
    crop_batch: int = 64
    embedding_source: str | None = None
    standin_domain: str | None = None
    embed_dim: int = 512
    dcp: tuple = ()
    store_scale: int = 8

    def __post_init__(self):
        k = 'cliphaze_cond'
        if self.density_source not in DENSITY_SOURCES:
            raise ValueError(f'{k}.density_source must be one of {DENSITY_SOURCES}, got {self.density_source!r}.')
        if self.normalize not in NORMALIZE_MODES:
            raise ValueError(f'{k}.normalize must be one of {NORMALIZE_MODES}, got {self.normalize!r}.')
        for name in ('crop', 'stride', 'crop_batch', 'embed_dim', 'store_scale'):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f'{k}.{name} must be an integer >= 1, got {value!r}.')
        if self.stride > self.crop:
            raise ValueError(f'{k}.stride ({self.stride}) must not exceed crop ({self.crop}): pixels between crops '
                             'would get no score.')
        if self.short_side is not None and (not isinstance(self.short_side, int) or self.short_side < self.crop):
            raise ValueError(f'{k}.short_side must be null or an integer >= crop ({self.crop}), got '
                             f'{self.short_side!r}.')
        if not (isinstance(self.logit_scale, (int, float)) and self.logit_scale > 0):
            raise ValueError(f'{k}.logit_scale must be a number > 0, got {self.logit_scale!r}.')
        from mixcl_arch.conditioning.vectors import check_templates
        for name in ('hazy_templates', 'clear_templates', 'scenes'):
            object.__setattr__(self, name, _strings(getattr(self, name), f'{k}.{name}'))
        for name in ('hazy_templates', 'clear_templates'):
            check_templates(list(getattr(self, name)), f'{k}.{name}')
        object.__setattr__(self, 'logit_scale', float(self.logit_scale))
        if self.embedding_source is None:
            object.__setattr__(self, 'embedding_source', 'clip' if self.density_source == 'clip' else 'standin')
        if self.embedding_source not in EMBEDDING_SOURCES:
            raise ValueError(f'{k}.embedding_source must be one of {sorted(EMBEDDING_SOURCES)} (add one with '
                             'mixcl_arch.clip.cliphaze_cond.register_embedding_source), got '
                             f'{self.embedding_source!r}.')
        dcp = dict(self.dcp.items() if isinstance(self.dcp, dict) else self.dcp)
        object.__setattr__(self, 'dcp', tuple(sorted(dcp.items())))
        if self.density_source == 'dcp':
            self.dcp_restorer()  # validates the DCP options now, not at the first image

    @classmethod
    def from_opt(cls, opt):
        """Build from a YAML dict (``cliphaze_cond:``); unknown keys raise ValueError naming them."""
        opt = dict(opt or {})
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(opt) - set(names))
        if unknown:
            raise ValueError(f'Unknown cliphaze_cond option(s) {unknown}; allowed: {names}.')
        return cls(**opt)

    def dcp_restorer(self, device='cpu'):
        """The :class:`~mixcl_arch.baselines.dcp.DCPRestorer` of the ``dcp`` options."""
        from mixcl_arch.baselines.dcp import DCPParams, DCPRestorer
        opt = dict(self.dcp)
        text = {k: v for k, v in opt.items() if isinstance(v, str)}  # --dcp-param KEY=VALUE values are text
        try:
            return DCPRestorer(device=device, params=DCPParams.from_mapping({**opt, **DCPParams.parse_strings(text)}))
        except ValueError as err:
            raise ValueError(f'cliphaze_cond.dcp: {err}') from err

    def provenance(self):
        """dict: what decides a stored density map and embedding (recorded in the feature store and checked)."""
        meta = {key: getattr(self, key) for key in _COMMON_KEYS}
        if self.density_source == 'clip':
            meta.update({key: (list(v) if isinstance(v, tuple) else v) for key in _CLIP_KEYS
                         for v in [getattr(self, key)]})
        else:
            meta['dcp'] = dict(self.dcp)
            meta['note'] = 'NOT CLIP: dark channel prior stand-in, density = 1 - t'
        if self.embedding_source == 'standin':
            meta['embedding_note'] = 'NOT CLIP: oracle stand-in, standin_text_feature(domain)'
        return meta


def register_embedding_source(name):
    """Decorator adding an embedding source selectable by ``embedding_source: <name>``.

    The function is called as ``fn(prior, x, cfg, domains)`` with the prior (or None), ``x`` (B, 3, H, W) hazy images
    in [0, 1], the :class:`CLIPHazeCondConfig` and the per-image domain labels (or None), and returns (B, E)
    L2-normalised embeddings. Example, a degradation-aware CLIP (DA-CLIP) built by the user::

        @register_embedding_source('daclip')
        def daclip_content(prior, x, cfg, domains):
            content, _degradation = daclip_model.encode_image(daclip_preprocess(x), control=True)
            return F.normalize(content.float(), dim=-1)
    """
    def deco(fn):
        EMBEDDING_SOURCES[str(name)] = fn
        return fn
    return deco


@register_embedding_source('clip')
def _clip_embedding(prior, x, cfg, domains):
    if prior is None:
        raise ValueError("cliphaze_cond.embedding_source 'clip' needs a CLIP prior (clip: options with weights); "
                         "without CLIP use density_source: dcp with embedding_source: standin.")
    return prior(x)['image_emb']


@register_embedding_source('standin')
def _standin_embedding(prior, x, cfg, domains):
    from mixcl_arch.data.clip_data_util import standin_text_feature
    if domains is None:
        if cfg.standin_domain is None:
            raise ValueError("cliphaze_cond.embedding_source 'standin' needs a domain label per image (pair CSV "
                             'domain column) or cliphaze_cond.standin_domain.')
        domains = [cfg.standin_domain] * x.shape[0]
    if len(domains) != x.shape[0]:
        raise ValueError(f'{len(domains)} domain labels for {x.shape[0]} images.')
    return torch.stack([standin_text_feature(d, cfg.embed_dim) for d in domains]).to(x.device)


def standin_provenance(domains, embed_dim=512):
    """Feature-store provenance of the stand-in route (no CLIP model): keys as ``CLIPPrior.provenance()``."""
    return {'model': 'standin', 'pretrained': None, 'pretrained_kind': 'standin', 'pretrained_sha256': None,
            'quick_gelu': None, 'model_cfg': None, 'domains': [str(d) for d in domains], 'templates': [],
            'prompt_sets': {}, 'embed_dim': int(embed_dim), 'logit_scale': None,
            'note': 'NOT CLIP: oracle stand-in vectors standin_text_feature(domain), one-hot domain probabilities'}


# --------------------------------------------------------------------------------------------------- density map
def crop_grid(length, crop, stride):
    """Start offsets of sliding crops along one axis: 0, stride, ... and a last one ending at the border.

    Args:
        length (int): Axis length (>= crop).
        crop (int): Crop size.
        stride (int): Step.

    Returns:
        list[int]: Sorted distinct starts; every index in [0, length) is inside at least one crop.
    """
    starts = list(range(0, length - crop + 1, stride))
    if starts[-1] != length - crop:
        starts.append(length - crop)
    return starts


def haze_text_features(prior, cfg):
    """(2, E) normalised class features of the hazy (row 0) and the clear (row 1) prompt ensembles (cached per
    prior and prompts, so a folder of images encodes them once)."""
    key = (cfg.scenes, cfg.hazy_templates, cfg.clear_templates)
    cache = _TEXT_CACHE.setdefault(prior, {})
    if key not in cache:
        rows = []
        for templates in (cfg.hazy_templates, cfg.clear_templates):
            feat = prior.encode_classes(list(cfg.scenes), list(templates)).mean(dim=0)
            rows.append(feat / feat.norm())
        cache[key] = torch.stack(rows)
    return cache[key]


def _minmax(d, eps=1e-6):
    lo = d.amin(dim=(2, 3), keepdim=True)
    span = d.amax(dim=(2, 3), keepdim=True) - lo
    # a constant map cannot be stretched: it keeps its value (already in [0, 1])
    return torch.where(span > eps, (d - lo) / span.clamp(min=eps), d)


@torch.no_grad()
def clip_density(prior, x, cfg):
    """Zero-shot CLIP haze-density map (module docstring, steps 1-4).

    Args:
        prior (CLIPPrior): Any open_clip model wrapped by :class:`~mixcl_arch.clip.prior.CLIPPrior`.
        x (Tensor): (B, 3, H, W) hazy images in [0, 1].
        cfg (CLIPHazeCondConfig): Options.

    Returns:
        Tensor: (B, 1, H, W) float32 in [0, 1] on ``x``'s device.
    """
    b, _, h, w = x.shape
    src = x.float().clamp(0, 1)
    target = cfg.short_side if cfg.short_side is not None else max(cfg.crop, min(h, w))
    if target != min(h, w):
        f = target / min(h, w)
        size = (max(cfg.crop, round(h * f)), max(cfg.crop, round(w * f)))
        src = F.interpolate(src, size=size, mode='bicubic', align_corners=False, antialias=True).clamp(0, 1)
    hr, wr = src.shape[2:]
    ys, xs = crop_grid(hr, cfg.crop, cfg.stride), crop_grid(wr, cfg.crop, cfg.stride)
    boxes = [(y, x0) for y in ys for x0 in xs]
    crops = torch.stack([src[:, :, y:y + cfg.crop, x0:x0 + cfg.crop] for y, x0 in boxes], dim=1)  # (B, K, 3, c, c)
    crops = crops.flatten(0, 1)
    text = haze_text_features(prior, cfg)
    dtype = next(prior.model.parameters()).dtype
    probs = []
    for i in range(0, crops.shape[0], cfg.crop_batch):
        pix = prior.preprocess_tensor(crops[i:i + cfg.crop_batch].to(prior.device))
        emb = prior.model.encode_image(pix.to(dtype)).float()
        emb = emb / emb.norm(dim=-1, keepdim=True)
        probs.append((cfg.logit_scale * emb @ text.T).softmax(dim=-1)[:, 0])
    p_hazy = torch.cat(probs).view(b, len(boxes)).to(x.device)
    acc = x.new_zeros(b, 1, hr, wr, dtype=torch.float32)
    cnt = x.new_zeros(1, 1, hr, wr, dtype=torch.float32)
    for k, (y, x0) in enumerate(boxes):
        acc[:, :, y:y + cfg.crop, x0:x0 + cfg.crop] += p_hazy[:, k, None, None, None]
        cnt[:, :, y:y + cfg.crop, x0:x0 + cfg.crop] += 1
    dens = acc / cnt
    if (hr, wr) != (h, w):
        dens = F.interpolate(dens, size=(h, w), mode='bilinear', align_corners=False, antialias=True)
    dens = dens.clamp(0, 1)
    return _minmax(dens) if cfg.normalize == 'minmax' else dens


@torch.no_grad()
def dcp_density(x, cfg):
    """NOT CLIP: the dark-channel haze density 1 - t (refined transmission), (B, 1, H, W) float32 in [0, 1]."""
    t = cfg.dcp_restorer(x.device).estimate(x.float().clamp(0, 1))['t']
    return (1.0 - t).clamp(0, 1)


def compute_density(prior, x, cfg):
    """The density map of hazy images ``x`` (B, 3, H, W) in [0, 1]: (B, 1, H, W) float32 in [0, 1] on ``x``'s
    device, by ``cfg.density_source`` (``prior`` None is enough for 'dcp')."""
    if cfg.density_source == 'dcp':
        return dcp_density(x, cfg)
    if prior is None:
        raise ValueError('cliphaze_cond.density_source: clip needs a CLIP prior (clip: options with weights); '
                         'without CLIP weights use density_source: dcp (the stand-in, not CLIP).')
    return clip_density(prior, x, cfg)


# ------------------------------------------------------------------------------------------------------- storage
def to_store_resolution(density, scale):
    """Area-average (B, 1, H, W) maps over ``scale`` x ``scale`` blocks -> (B, 1, ceil(H/s), ceil(W/s)).

    Partial border blocks average their valid pixels only (``avg_pool2d`` with ``ceil_mode`` clips the window).
    """
    return F.avg_pool2d(density.float(), int(scale), ceil_mode=True) if scale > 1 else density.float()


def crop_density(dmap, top, left, height, width, scale):
    """The part of a stored low-resolution map that belongs to an image crop.

    A stored sample i is centred on image pixel (i + 0.5) * s - 0.5; the output sample j of a crop starting at
    ``top`` is centred on crop pixel (j + 0.5) * s - 0.5, i.e. on stored index ``top / s + j``. When ``top`` and
    ``left`` are multiples of s this is an exact slice; otherwise the map is linearly interpolated between the
    neighbouring blocks (indices clamped at the border). With ``height`` / ``width`` multiples of s the output covers
    the crop exactly, so flipping or rotating it by 90 degrees matches the same transform of the image crop.

    Args:
        dmap (Tensor): (1, h, w) stored map.
        top, left (int): Crop offset in image pixels.
        height, width (int): Crop size in image pixels.
        scale (int): Store scale s.

    Returns:
        Tensor: (1, ceil(height / s), ceil(width / s)) float32.
    """
    dmap = dmap.float()

    def axis(start, size, length):
        pos = start / scale + torch.arange(math.ceil(size / scale), dtype=torch.float32)
        lo = pos.floor().long().clamp(0, length - 1)
        hi = (lo + 1).clamp(max=length - 1)
        return lo, hi, (pos - lo.float()).clamp(0, 1)

    y0, y1, fy = axis(top, height, dmap.shape[1])
    x0, x1, fx = axis(left, width, dmap.shape[2])
    rows = dmap[:, y0] * (1 - fy)[None, :, None] + dmap[:, y1] * fy[None, :, None]
    return rows[:, :, x0] * (1 - fx) + rows[:, :, x1] * fx


def density_mismatches(meta, cfg):
    """Differences between a stored map's provenance and the conditioning options (empty list: compatible).

    Args:
        meta (dict): ``cfg.provenance()`` recorded in the store.
        cfg (CLIPHazeCondConfig): Options the data should have been made with.
    """
    want = cfg.provenance()
    return [f'{key}: store {meta.get(key)!r}, options {value!r}' for key, value in want.items()
            if key not in ('note', 'embedding_note') and meta.get(key) != value]

