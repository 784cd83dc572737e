"""``MixCLDehazeModel``: :class:`mixcl_arch.models.dehaze_model.DehazeModel` plus conditioning, for conditioned nets.

Differences from DehazeModel (itself BasicSR's SRModel with data range, AMP, EMA, CR loss, tiling, dehazing metrics
and safe atomic checkpoints), and only those:

- at construction, the run's one conditioner (:func:`mixcl_arch.conditioning.conditioner.build_conditioner`) is
  built for ``network_g`` from the option file's top-level sections, parsed once into a
  :class:`mixcl_arch.conditioning.config.ConditioningConfig`::

      clip:            # the frozen CLIP prior (source clip), and what a feature store must have been made with
        model: ViT-B-32
        pretrained: openai
      conditioning:
        source: clip   # clip | store | oracle | domain | none
        mode: hard     # hard | soft
        extra: []      # 1 + len(extra) == network_g.num_cond (MixCLDehazeNet)
        fallback: ~    # source clip without CLIP weights: ~ (error) | none | <domain> (with store)
        store: ~       # per-domain text features; per-image features of datasets without a feature_store
      cliphaze_cond: {}  # CLIPHazeNet's density map and embedding (mixcl_arch.clip.cliphaze_cond.CLIPHazeCondConfig)

  Everything that can go wrong with them fails there, before iteration 1: bad or old-style keys, a
  ``conditioning.extra`` that does not fit ``network_g.num_cond``, missing CLIP weights without a fallback, a
  feature store (each ``datasets.*.feature_store``, and ``conditioning.store`` for source store) made with other CLIP
  or density options or without density maps, a dataset without a store (source store) or a pair CSV (source
  oracle), and a train ``gt_size`` that stored density maps (1 / ``store_scale`` of the image) cannot follow. The
  conditioner is a plain attribute: never in DDP, the optimizer or a checkpoint;
- :meth:`feed_data` turns each batch into the net's conditioning with it, from the batch's records (all optional,
  written by :class:`mixcl_arch.data.clip_paired_image_dataset.CLIPPairedImageDataset`): 'key' (feature-store row),
  'feature_store' (the dataset's store), 'domain' (pair CSV label, source oracle) and 'crop' (what stored density
  maps are cut and turned by); a batch without them (BasicSR's datasets) suits sources clip, domain and none;
- the forward (training, validation, test) passes it on: MixCLDehazeNet's (B, K, E) stack as the second argument,
  CLIPHazeNet's ``density`` / ``embedding`` as keywords; tiled validation / test gives every tile the conditioning of
  the whole image (a density map: its own slice).

An unconditioned net (MixDehazeNet, AODNet, CLIPHazeNet with ``cam: none``) still trains here as before, through
``net(lq)``; the log suggests ``model_type: DehazeModel``, which is the same without the conditioning.
"""
from functools import partial
from os import path as osp

from basicsr.utils import get_root_logger
from basicsr.utils.registry import MODEL_REGISTRY

from mixcl_arch.conditioning.conditioner import CondBatch, build_conditioner
from mixcl_arch.conditioning.config import ConditioningConfig
from mixcl_arch.conditioning.kinds import Density
from mixcl_arch.data.clip_data_util import read_pair_csv
from mixcl_arch.models.dehaze_model import DehazeModel
from mixcl_arch.utils.net_call import run_net
from mixcl_arch.utils.options import OptionError
from mixcl_arch.utils.tiling import conditioned_tiled_forward, net_tile_align


@MODEL_REGISTRY.register()
class MixCLDehazeModel(DehazeModel):
    """DehazeModel that feeds the net its conditioning; see the module docstring.

    Attributes:
        cond_cfg (ConditioningConfig): The run's conditioning options.
        conditioner (mixcl_arch.conditioning.conditioner.Conditioner | None): Makes the net's conditioning of a
            batch; None for an unconditioned net.
        cond (Tensor | dict[str, Tensor] | None): The fed batch's conditioning: (B, K, E) for MixCLDehazeNet,
            ``{'density': (B, 1, h, w), 'embedding': (B, E)}`` (those the net takes) for CLIPHazeNet.
    """

    def __init__(self, opt):
        self.cond_cfg = ConditioningConfig.from_options(opt)  # option errors before the net is built
        self.conditioner = None
        self.cond = None
        super().__init__(opt)

    def _check_net_inputs(self):
        """Build the conditioner of net_g (it checks stores, CLIP weights and the net's inputs now); suggest
        DehazeModel for a net that takes no conditioning."""
        logger = get_root_logger()
        datasets = {phase: ds for phase, ds in (self.opt.get('datasets') or {}).items() if isinstance(ds, dict)}
        stores = [ds['feature_store'] for ds in datasets.values() if ds.get('feature_store')]
        if self.cond_cfg.source == 'store' and self.cond_cfg.store:
            stores.append(self.cond_cfg.store)
        self.conditioner = build_conditioner(self.cond_cfg, self._bare_net(), self.device,
                                             stores=list(dict.fromkeys(stores)))
        if self.conditioner is None:
            logger.info(f"network_g type {self.opt['network_g']['type']} takes no conditioning: "
                        'model_type: DehazeModel trains it the same way (MixCLDehazeModel only adds conditioning).')
            return
        self._check_datasets(datasets)
        for note in self.conditioner.notes:
            logger.warning(note)
        kinds = ', '.join(kind.name for kind in self.conditioner.kinds)
        logger.info(f'Conditioning of network_g ({kinds}): {self.conditioner.source}.')

    def _check_datasets(self, datasets):
        """What the datasets can no longer check, now that they serve records only.

        Source oracle: every dataset needs a pair CSV (``meta_file``, its domain column), and with a store every label
        needs a text feature in it. Source store: every dataset
        needs a store, and stored density maps (1 / ``store_scale`` of the image) follow a train crop (flipped and
        turned as the image) exactly only when ``gt_size`` is a multiple of ``store_scale``.
        """
        if self.cond_cfg.source == 'oracle':
            for phase, ds in datasets.items():
                if not ds.get('meta_file'):
                    raise OptionError(f'datasets.{phase}.meta_file: missing; conditioning.source oracle reads each '
                                      "image's domain label from the pair CSV's domain column.")
                store = self.cond_cfg.store or ds.get('feature_store')
                # every label needs a text feature in the store (the stand-in takes any label); a missing pair CSV is
                # the dataset's error, raised when BasicSR builds it, before the model
                if store and osp.isfile(ds['meta_file']):
                    rows = read_pair_csv(ds['meta_file'], need_domain=True,
                                         domain_column=ds.get('domain_column', 'domain'))
                    labels = sorted({row[ds.get('domain_column', 'domain')] for row in rows})
                    self.conditioner.text_vectors(labels, store)
        if self.cond_cfg.source != 'store':
            return
        density = any(isinstance(kind, Density) for kind in self.conditioner.kinds)
        for phase, ds in datasets.items():
            path = ds.get('feature_store') or self.cond_cfg.store
            if path is None:
                raise OptionError(f'datasets.{phase}.feature_store: missing; conditioning.source store reads each '
                                  "image's row from it (scripts/extract_clip_features.py), or set conditioning.store.")
            if density and ds.get('gt_size'):
                scale = int(self.conditioner.store(path).spatial_meta['density']['store_scale'])
                if int(ds['gt_size']) % scale:
                    raise OptionError(f"datasets.{phase}.gt_size: {ds['gt_size']} is not a multiple of {scale}, the "
                                      f'store_scale of the density maps in {path}: the stored map cannot follow the '
                                      f'crop; use a multiple of {scale}.')

    def feed_data(self, data):
        """DehazeModel's 'lq' / 'gt', and the net's conditioning of the batch (``self.cond``) from the conditioner,
        which reads the batch's optional records 'key', 'feature_store', 'domain' and 'crop'."""
        super().feed_data(data)
        self.cond = None if self.conditioner is None else self.conditioner(CondBatch.from_data(data, self.lq))

    def _run(self, net, lq, tiles=None):
        """:meth:`DehazeModel._run` with the batch's conditioning: every tile gets the whole image's (a density map:
        its slice, :func:`mixcl_arch.utils.tiling.conditioned_tiled_forward`)."""
        fn = partial(run_net, net, data_range=getattr(self._bare_net(), 'data_range', 'unit'))
        if tiles is None:
            return fn(lq, self.cond)
        return conditioned_tiled_forward(fn, lq, self.cond, *tiles, align=net_tile_align(net))
