"""Kinds of conditioning input: what a net takes besides the image, and how each source makes it.

A kind is one class registered with :func:`register_kind`. It decides from the net whether the net takes it
(:meth:`Kind.for_net`) and makes its tensor for a batch in three ways, one per family of sources:

- :meth:`Kind.online`: from the images (source ``clip``; the CLIP prior, or a stand-in that needs none);
- :meth:`Kind.stored`: from a feature store's rows (source ``store``), following each image's crop record;
- :meth:`Kind.from_domains`: from per-image domain labels and their text vectors (sources ``oracle``, ``domain``,
  ``none``: labels and vectors None).

Kinds here: :class:`VectorStack` (MixCLDehazeNet's (B, K, E) stack, the net's second positional argument),
:class:`Density` (CLIPHazeNet's (B, 1, h, w) haze-density map, a *spatial* kind stored at reduced resolution) and
:class:`Embedding` (CLIPHazeNet's (B, E) image embedding). Adding a kind = one class here plus one field of
:class:`~mixcl_arch.conditioning.config.ConditioningConfig` for its options (docs/clip.md "Adding a kind").
"""
import torch

from mixcl_arch.clip.cliphaze_cond import EMBEDDING_SOURCES, compute_density, crop_density, density_mismatches
from mixcl_arch.conditioning.vectors import build_condition, parse_extra

KINDS = []


def register_kind(cls):
    """Class decorator: make ``cls`` a kind that :func:`net_kinds` offers to every net."""
    KINDS.append(cls)
    return cls


def net_kinds(net, cfg):
    """The kinds the (bare) ``net`` takes, in registration order; [] for an unconditioned net.

    Args:
        net (nn.Module): The network.
        cfg (ConditioningConfig): Options.

    Returns:
        list[Kind]
    """
    return [kind for kind in (cls.for_net(net, cfg) for cls in KINDS) if kind is not None]


def apply_crop(dmap, crop, scale):
    """Cut a stored (1, h, w) map to an image crop and repeat the crop's flips / rotation on it.

    Args:
        dmap (Tensor): (1, h, w) map stored at 1 / ``scale`` of the image resolution.
        crop (Tensor): (7,) crop record (top, left, height, width, hflip, vflip, rot90 count), as the dataset applied
            it to the image: crop first, then horizontal flip, vertical flip, then ``k`` quarter turns.
        scale (int): Store scale.

    Returns:
        Tensor: (1, ceil(height / s), ceil(width / s)) float32 (sides swapped by an odd ``k``).

    Raises:
        ValueError: A flipped or rotated crop whose sides are not multiples of ``scale`` (the map would not mirror
            onto the image).
    """
    top, left, height, width, hflip, vflip, k = (int(v) for v in crop)
    if (hflip or vflip or k % 4) and (height % scale or width % scale):
        raise ValueError(f'A flipped / rotated {height}x{width} crop must be a multiple of the store scale {scale} of '
                         'the stored map, so that the map covers it exactly; set the train gt_size to a multiple of '
                         f'{scale}.')
    out = crop_density(dmap, top, left, height, width, scale)
    if hflip:
        out = out.flip(-1)
    if vflip:
        out = out.flip(-2)
    return torch.rot90(out, k, dims=(1, 2)) if k % 4 else out


class Kind:
    """One conditioning input of a net (module docstring).

    Attributes:
        name (str): The net's input: 'cond' (the second positional argument) or a keyword (``density``).
    """
    name = None

    @classmethod
    def for_net(cls, net, cfg):
        """This kind for ``net`` when the net takes it, else None."""
        raise NotImplementedError

    def needs_prior(self, cfg):
        """bool: :meth:`online` needs the CLIP prior."""
        return True

    def online(self, prior, batch, cfg):
        """Tensor from the images ``batch.images`` (B, 3, H, W) in [0, 1]; ``prior`` None when not needed."""
        raise NotImplementedError

    def check_store(self, store, cfg):
        """Raise ValueError (naming ``store.path``) when the feature store cannot give this kind."""

    def stored(self, store, rows, batch, cfg):
        """Tensor from the feature store ``store`` for its rows ``rows`` (B,) long."""
        raise NotImplementedError

    def from_domains(self, labels, vectors, batch, cfg):
        """Tensor from per-image domain labels (list[str] | None) and their (B, E) text vectors (or None)."""
        raise NotImplementedError


@register_kind
class VectorStack(Kind):
    """MixCLDehazeNet's (B, K, E) stack: primary text feature (``conditioning.mode``), then ``conditioning.extra``.

    Args:
        num_cond (int): K, the vectors the net takes.
        cond_dim (int): E.
        cfg (ConditioningConfig): Options; 1 + len(extra) must equal K.
    """
    name = 'cond'

    def __init__(self, num_cond, cond_dim, cfg):
        self.num_cond, self.cond_dim = int(num_cond), int(cond_dim)
        if 1 + len(cfg.extra) != self.num_cond:
            raise ValueError(f'The network takes {self.num_cond} conditioning vector(s) (network_g.num_cond) but '
                             f'conditioning.extra {list(cfg.extra)} gives 1 + {len(cfg.extra)}; set conditioning.extra '
                             'to what the network was trained with.')

    @classmethod
    def for_net(cls, net, cfg):
        num_cond = int(getattr(net, 'num_cond', 0) or 0)
        return cls(num_cond, getattr(net, 'cond_dim', 512), cfg) if num_cond else None

    def _checked(self, cond):
        if cond.dim() != 3 or cond.shape[1:] != (self.num_cond, self.cond_dim):
            raise ValueError(f'Conditioning of shape {tuple(cond.shape)} does not fit the network, which takes '
                             f'(B, {self.num_cond}, {self.cond_dim}); check clip.model and conditioning.extra.')
        return cond.float()

    def online(self, prior, batch, cfg):
        return self._checked(build_condition(prior(batch.images), cfg.mode, cfg.extra))

    def check_store(self, store, cfg):
        store.check(cfg.clip.as_dict(), embed_dim=self.cond_dim, path=store.path)
        try:
            parse_extra(cfg.extra, cfg.mode, set_names=store.prompt_set_names)
        except ValueError as err:
            raise ValueError(f'Feature store {store.path}: {err}') from None

    def stored(self, store, rows, batch, cfg):
        return self._checked(build_condition(store.get_rows(rows), cfg.mode, cfg.extra))

    def from_domains(self, labels, vectors, batch, cfg):
        cond = batch.images.new_zeros(batch.images.shape[0], self.num_cond, self.cond_dim, dtype=torch.float32)
        if vectors is not None:
            cond[:, 0] = vectors.to(cond)
        return cond


@register_kind
class Density(Kind):
    """CLIPHazeNet's (B, 1, h, w) haze-density map in [0, 1] (options: ``cliphaze_cond``).

    Online: the zero-shot CLIP map, or the DCP stand-in 1 - t (``density_source: dcp``, NOT CLIP), at the image's
    resolution. Stored: the store's 1 / ``store_scale`` map cut to each crop (:func:`apply_crop`); the net resizes it.
    """
    name = 'density'

    @classmethod
    def for_net(cls, net, cfg):
        return cls() if getattr(net, 'needs_density', False) else None

    def needs_prior(self, cfg):
        return cfg.cliphaze.density_source == 'clip'

    def online(self, prior, batch, cfg):
        return compute_density(prior, batch.images.float().clamp(0, 1), cfg.cliphaze)

    def check_store(self, store, cfg):
        meta = store.spatial_meta.get('density')
        if meta is None:
            raise ValueError(f'Feature store {store.path} has no density maps; re-run scripts/extract_clip_features.py '
                             'with --density.')
        diffs = density_mismatches(meta, cfg.cliphaze)
        if diffs:
            raise ValueError(f'Density maps of the feature store {store.path} do not match cliphaze_cond: '
                             + '; '.join(diffs) + '. Re-run scripts/extract_clip_features.py --density --overwrite.')

    def stored(self, store, rows, batch, cfg):
        if batch.crops is None:
            raise ValueError("Stored density maps need the batch's crop records ('crop', written by the dataset).")
        scale = int(store.spatial_meta['density']['store_scale'])
        maps = [apply_crop(store.get_spatial('density', row), crop, scale) for row, crop in zip(rows, batch.crops)]
        return torch.stack(maps).to(batch.images.device)

    def from_domains(self, labels, vectors, batch, cfg):
        if cfg.cliphaze.density_source != 'dcp':
            raise ValueError(f'conditioning.source {cfg.source}: a CLIP density map needs source clip or store (or '
                             'cliphaze_cond.density_source: dcp, the stand-in).')
        return self.online(None, batch, cfg)


@register_kind
class Embedding(Kind):
    """CLIPHazeNet's (B, E) image embedding (``cliphaze_cond.embedding_source``: clip, standin or a registered hook).

    Stored: the store's image embedding. From domains: the stand-in vector of each label (NOT CLIP).
    """
    name = 'embedding'

    @classmethod
    def for_net(cls, net, cfg):
        return cls() if getattr(net, 'needs_embedding', False) else None

    def needs_prior(self, cfg):
        return cfg.cliphaze.embedding_source != 'standin'

    def online(self, prior, batch, cfg):
        source = EMBEDDING_SOURCES[cfg.cliphaze.embedding_source]
        images = batch.images.float().clamp(0, 1)
        return source(prior, images, cfg.cliphaze, batch.domains).float().to(images.device)

    def check_store(self, store, cfg):
        if store.embed_dim != cfg.cliphaze.embed_dim:
            raise ValueError(f'Feature store {store.path}: image embeddings of {store.embed_dim} values, '
                             f'cliphaze_cond.embed_dim is {cfg.cliphaze.embed_dim}.')

    def stored(self, store, rows, batch, cfg):
        return store.get_rows(rows)['image_emb'].float().to(batch.images.device)

    def from_domains(self, labels, vectors, batch, cfg):
        if labels is None:
            return batch.images.new_zeros(batch.images.shape[0], cfg.cliphaze.embed_dim, dtype=torch.float32)
        standin = EMBEDDING_SOURCES['standin']
        return standin(None, batch.images, cfg.cliphaze, list(labels)).float().to(batch.images.device)
