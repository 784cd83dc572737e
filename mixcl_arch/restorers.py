"""One interface over every way this project can dehaze an image (the CLI and the benchmark harness use it).

A restorer maps a (B, 3, H, W) float tensor in [0, 1] to a tensor of the same shape in [0, 1] and has the attributes
``name`` (str), ``num_params`` (int) and ``net`` (``nn.Module`` or None). :func:`build_restorer` makes one:

- ``'net'``: a trained network (MixCLDehazeNet, MixDehazeNet, CLIPHazeNet or any registered arch) from a checkpoint,
  built from an options YAML's ``network_g``, the checkpoint's record or, for the MixDehazeNet family, inferred from
  the checkpoint's keys; CLIP conditioning is computed online: MixCLDehazeNet's vectors with
  :class:`mixcl_arch.clip.CLIPPrior` (:class:`ConditionProvider`, with an explicit fallback when the CLIP weights are
  missing), CLIPHazeNet's density map and image embedding with
  :func:`mixcl_arch.clip.cliphaze_cond.compute_cliphaze_conditioning` (:class:`CLIPHazeConditionProvider`: CLIP, or
  the DCP stand-in ``density_source: dcp``); optional seamless tiling and mixed precision;
- ``'hazy'``: identity (the "do nothing" baseline);
- ``'dcp'``: dark channel prior, ``mixcl_arch.baselines.dcp.DCPRestorer(**kwargs)``;
- ``'dehazenet'``: ``mixcl_arch.baselines.dehazenet.DehazeNetRestorer(weights, device=device, **kwargs)``.

The two baselines are imported only when requested.
"""
import contextlib
import copy
import importlib
import inspect
import os
import warnings

import torch

from mixcl_arch.clip.cliphaze_cond import cliphaze_cond_options
from mixcl_arch.export import OnnxRuntimeRunner, cached_onnx, resolve_backend
from mixcl_arch.utils.checkpoint import check_state_dict, extract_state_dict, infer_arch_from_state_dict, \
    load_checkpoint_file, read_checkpoint_meta
from mixcl_arch.utils.device import resolve_device  # noqa: F401  (public here too)
from mixcl_arch.utils.options import load_yaml_file
from mixcl_arch.utils.net_call import cliphaze_inputs, run_net
from mixcl_arch.utils.tiling import conditioned_tiled_forward, net_tile_align

METHODS = ('net', 'hazy', 'dcp', 'dehazenet')
COND_MODES = ('hard', 'soft')
# conditioning settings that may sit in the YAML ``clip:`` section but are not CLIPPrior options
COND_OPTION_KEYS = ('cond_fallback', 'feature_store', 'cond_mode', 'cond_extra')
AMP_DTYPES = {None: None, 'none': None, 'fp16': torch.float16, 'bf16': torch.bfloat16}
LAZY_BASELINES = {
    'dcp': ('mixcl_arch.baselines.dcp', 'DCPRestorer'),
    'dehazenet': ('mixcl_arch.baselines.dehazenet', 'DehazeNetRestorer'),
}


class ConditioningFallbackWarning(UserWarning):
    """Emitted by :func:`build_restorer` when the network runs with fallback conditioning instead of CLIP."""


class DataRangeMismatchWarning(UserWarning):
    """Emitted by :func:`build_net_from_checkpoint` when ``--opt`` gives another ``data_range`` than the checkpoint."""


def load_options(opt):
    """Return an options dict from a dict, a YAML path, or None (-> {}).

    Raises:
        FileNotFoundError: For a missing YAML file.
        ValueError: For a YAML that is not a mapping.
    """
    if opt is None:
        return {}
    if isinstance(opt, dict):
        return copy.deepcopy(opt)
    path = os.fspath(opt)
    if not os.path.isfile(path):
        raise FileNotFoundError(f'Options file not found: {path}')
    data = load_yaml_file(path)
    if not isinstance(data, dict):
        raise ValueError(f'{path}: expected a YAML mapping with sections like network_g and clip.')
    return data


def count_params(module):
    """Number of parameters of ``module`` (0 for None)."""
    return 0 if module is None else sum(p.numel() for p in module.parameters())


class HazyRestorer:
    """Identity: returns the hazy input (clamped to [0, 1]); the lower bound of every comparison."""

    name = 'hazy'
    num_params = 0
    net = None

    def __call__(self, x):
        """(B, 3, H, W) in [0, 1] -> the same tensor, clamped."""
        return x.clamp(0, 1)


def _infer_fusion_opts(state):
    """proj_dim / fusion_chans of a MixCLDehazeNet state dict (text_dim is not stored in the weights)."""
    return {
        'proj_dim': int(state['text_emb.q1.weight'].shape[0]),
        'fusion_chans': int(state['text_emb.postProj_s.weight'].shape[0]),
    }


def build_net_from_checkpoint(weights, opt=None, param_key=None, strict=None, allow_unsafe_pickle=False):
    """Build a network and load its weights.

    Args:
        weights (str | None): Checkpoint (BasicSR ``params``/``params_ema``, official ``state_dict`` format, or
            safetensors). None uses ``opt['path']['pretrain_network_g']``.
        opt (dict | None): Options with ``network_g`` (any registered arch). Without it the network is the one the
            checkpoint records (``meta.network_g``, written by this project's training, any arch) or, for a file
            without a record (official, converted), the MixDehazeNet family is inferred from the weights:
            MixDehazeNet vs MixCLDehazeNet (``text_emb.*`` keys), stage widths and depths, number of conditioning
            vectors, fusion sizes; built with the recorded ``data_range``, else 'unit'. With ``network_g``, a
            ``type`` other than the recorded arch is an error and another ``data_range`` warns
            (:class:`DataRangeMismatchWarning`; the ``network_g`` value is used: this project's nets convert inside,
            so their weights are the same for both ranges).
        param_key (str | None): Weights key; None -> ``opt['path']['param_key_g']``, else auto ('params_ema',
            then 'params', then 'state_dict'). An explicit key that the file lacks is an error.
        strict (bool | None): Require an exact key match; None -> ``opt['path']['strict_load_g']``, default True.
        allow_unsafe_pickle (bool): Fully unpickle a legacy checkpoint that ``weights_only`` refuses (it can run
            code); also enabled by ``opt['path']['allow_unsafe_pickle'] is True``.

    Returns:
        tuple[nn.Module, dict]: The network in eval mode on CPU, and the network options used.
    """
    opt = opt or {}
    path_opt = opt.get('path') or {}
    weights = weights or path_opt.get('pretrain_network_g')
    if not weights:
        raise ValueError('No network weights given: pass --weights FILE (or set path.pretrain_network_g in the YAML).')
    param_key = param_key or path_opt.get('param_key_g')
    if strict is None:
        strict = path_opt.get('strict_load_g', True) is not False
    unsafe = allow_unsafe_pickle or path_opt.get('allow_unsafe_pickle') is True
    ckpt = load_checkpoint_file(weights, unsafe)
    state = extract_state_dict(ckpt, param_key, weights)
    meta = read_checkpoint_meta(ckpt, weights)
    from basicsr.archs import build_network
    if opt.get('network_g'):
        net_opt = copy.deepcopy(opt['network_g'])
        if 'type' not in net_opt:
            raise ValueError('network_g in the options has no `type`.')
        if meta.get('arch') and net_opt['type'] != meta['arch']:
            raise ValueError(f'{weights} holds a {meta["arch"]} (recorded in the checkpoint), but network_g.type in '
                             f'the options is {net_opt["type"]!r}; use options for {meta["arch"]} or no --opt.')
    elif meta.get('network_g'):
        net_opt = copy.deepcopy(meta['network_g'])
    else:
        try:
            net_opt = infer_arch_from_state_dict(state)
        except ValueError as err:
            raise ValueError(f'{weights}: cannot infer the network from the checkpoint ({err}). Pass --opt with a '
                             'YAML whose network_g describes it.') from err
        if net_opt['type'] == 'MixCLDehazeNet' and 'fusion' not in net_opt:  # the default fusion's sizes
            net_opt.update(_infer_fusion_opts(state))
        net_opt['data_range'] = meta.get('data_range') or 'unit'
    net = build_network(copy.deepcopy(net_opt))
    recorded, used = meta.get('data_range'), getattr(net, 'data_range', None)
    if recorded and used and recorded != used:
        warnings.warn(f'{weights} records data_range {recorded!r}; the options build the net with {used!r} '
                      f'(network_g.data_range{"" if "data_range" in net_opt else " left to the arch default"}), which '
                      'is used. Images still go in and come out in [0, 1], and this project\'s nets convert the range '
                      'inside, so their weights and results are the same either way. Drop --opt to use the recorded '
                      'network.', DataRangeMismatchWarning, stacklevel=2)
    check_state_dict(net, state, weights, strict)
    net.load_state_dict(state, strict=strict)
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net, net_opt


def _cond_setting(opt, key):
    """A conditioning setting from ``clip:`` or from the first dataset that has it."""
    clip_opt = opt.get('clip') or {}
    if clip_opt.get(key) is not None:
        return clip_opt[key]
    for ds in (opt.get('datasets') or {}).values():
        if isinstance(ds, dict) and ds.get(key) is not None:
            return ds[key]
    return None


def load_domain_text_features(path):
    """Per-domain CLIP text features of a feature store (``scripts/extract_clip_features.py``).

    Returns:
        dict[str, Tensor]: domain name -> (E,) float32 feature.

    Raises:
        FileNotFoundError: Missing file. ValueError: Not a feature store.
    """
    from mixcl_arch.clip import load_domain_text_features as read_store
    return {str(k): torch.as_tensor(v, dtype=torch.float32).reshape(-1) for k, v in read_store(path).items()}


class ConditionProvider:
    """Computes the (B, K, E) conditioning of a batch: online CLIP, or a fixed fallback vector.

    Args:
        num_cond (int): K, the number of vectors the network takes.
        cond_dim (int): E.
        clip_opt (dict): CLIPPrior options (the YAML ``clip:`` section).
        cond_mode (str): 'hard' (text feature of the most likely domain, the reference) or 'soft'.
        cond_extra (list | None): Extra vectors after the primary one, as ``build_condition`` names them.
        fallback (str): What to do when the CLIP weights are missing: 'error' (raise), 'none' (zero vectors) or a
            domain name (that domain's text feature from ``feature_store``; extra vectors are zero).
        feature_store (str | None): Feature store file with per-domain text features.
        device (torch.device): Device of the CLIP model and of the returned tensors.
    """

    def __init__(self, num_cond, cond_dim, clip_opt=None, cond_mode='hard', cond_extra=None, fallback='error',
                 feature_store=None, device='cpu'):
        if cond_mode not in COND_MODES:
            raise ValueError(f'cond_mode must be one of {COND_MODES}, got {cond_mode!r}.')
        self.num_cond = int(num_cond)
        self.cond_dim = int(cond_dim)
        self.cond_mode = cond_mode
        self.cond_extra = list(cond_extra or [])
        self.device = torch.device(device)
        self.prior = None
        self.fixed = None
        self.notes = []
        self.source = None
        self.last_probs = None
        self.domains = None
        fallback = 'error' if fallback is None else str(fallback)
        try:
            from mixcl_arch.clip import CLIPPrior, CLIPWeightsError
        except ImportError as err:
            CLIPPrior, CLIPWeightsError = None, None
            clip_error = f'the CLIP prior (mixcl_arch.clip) cannot be imported: {err}'
        if CLIPPrior is not None:
            try:
                prior_opt = {k: v for k, v in (clip_opt or {}).items() if k not in COND_OPTION_KEYS}
                self.prior = CLIPPrior.from_opt(dict(prior_opt, device=str(self.device)))
                self.source = 'clip'
                self.domains = list(getattr(self.prior, 'domains', []) or [])
                self._check_k()
                return
            except CLIPWeightsError as err:
                clip_error = str(err)
        if fallback == 'error':
            raise RuntimeError(
                f'CLIP weights are missing, so the conditioning cannot be computed: {clip_error}\n'
                'Set the CLIP weights with `clip.pretrained` in the --opt YAML or --clip-pretrained FILE, or run '
                'without CLIP by choosing a fallback: --cond-fallback <domain> (e.g. outdoor, with --feature-store '
                'FILE holding the per-domain text features) or --cond-fallback none (zero conditioning vectors; '
                'results are worse than with CLIP).')
        if fallback == 'none':
            self.fixed = torch.zeros(self.num_cond, self.cond_dim)
            self.source = 'none'
            self.notes.append(f'CLIP weights are missing ({clip_error.splitlines()[0]}). Using ZERO conditioning '
                              'vectors (--cond-fallback none): the network runs without its CLIP prior.')
        else:
            if not feature_store:
                raise ValueError(f'--cond-fallback {fallback} needs the per-domain text features of a feature store: '
                                 'pass --feature-store FILE (written by scripts/extract_clip_features.py), or use '
                                 '--cond-fallback none.')
            feats = load_domain_text_features(feature_store)
            if fallback not in feats:
                raise ValueError(f'--cond-fallback {fallback}: domain not in {feature_store} '
                                 f'(domains: {sorted(feats)}).')
            vec = feats[fallback]
            if vec.numel() != self.cond_dim:
                raise ValueError(f'{feature_store}: text feature of {fallback!r} has {vec.numel()} values, the network '
                                 f'takes {self.cond_dim}.')
            self.fixed = torch.zeros(self.num_cond, self.cond_dim)
            self.fixed[0] = vec
            self.source = f'domain:{fallback}'
            self.notes.append(f'CLIP weights are missing ({clip_error.splitlines()[0]}). Using the fixed text feature '
                              f'of domain {fallback!r} from {feature_store} for every image (--cond-fallback).')
            if self.num_cond > 1:
                self.notes.append(f'The network takes {self.num_cond} conditioning vectors; vectors 2..{self.num_cond}'
                                  ' need CLIP and are set to zero.')
        self.fixed = self.fixed.to(self.device)

    def _check_k(self):
        if 1 + len(self.cond_extra) != self.num_cond:
            raise ValueError(f'The network takes {self.num_cond} conditioning vectors but the options give 1 + '
                             f'{len(self.cond_extra)} (cond_extra={self.cond_extra}); set cond_extra in the YAML '
                             '(clip: or datasets:) to what the network was trained with.')

    @torch.no_grad()
    def __call__(self, x):
        """(B, 3, H, W) in [0, 1] -> (B, K, E) float32 conditioning."""
        if self.fixed is not None:
            return self.fixed[None].expand(x.shape[0], -1, -1)
        from mixcl_arch.clip import build_condition
        out = self.prior(x.float().clamp(0, 1))
        self.last_probs = out.get('probs')
        cond = build_condition(out, mode=self.cond_mode, extra=self.cond_extra)
        if cond.dim() == 2:
            cond = cond[:, None]
        if tuple(cond.shape[1:]) != (self.num_cond, self.cond_dim):
            raise ValueError(f'CLIP conditioning has shape {tuple(cond.shape)}, the network takes '
                             f'(B, {self.num_cond}, {self.cond_dim}); check clip.model and cond_extra.')
        return cond.float()


class CLIPHazeConditionProvider:
    """Computes CLIPHazeNet's conditioning of a batch online: its haze-density map and image embedding.

    Both come from :func:`mixcl_arch.clip.cliphaze_cond.compute_cliphaze_conditioning` (see docs/cliphaze.md
    "Conditioning"): the zero-shot CLIP map and CLIP embedding, or the stand-in of ``density_source: dcp`` (1 - t of
    the dark channel prior and the oracle stand-in embedding: NOT CLIP, said in :attr:`notes`).

    Args:
        inputs (tuple[str]): What the net takes (:func:`cliphaze_inputs`): 'density' and / or 'embedding'.
        cond_opt (dict | None): ``cliphaze_cond:`` options (:class:`~mixcl_arch.clip.cliphaze_cond.CLIPHazeCondConfig`).
        clip_opt (dict | None): CLIPPrior options (the YAML ``clip:`` section), used when a needed input comes from
            CLIP (``density_source: clip``, ``embedding_source: clip``); otherwise no CLIP model is loaded.
        device (str | torch.device): Device of the CLIP model and of the returned tensors.

    Raises:
        ValueError: Bad ``cliphaze_cond`` options, or the stand-in embedding without ``standin_domain`` (images
            given to a restorer carry no domain label).
        RuntimeError: CLIP weights missing where CLIP is needed; the message says how to use the DCP stand-in.
    """

    def __init__(self, inputs, cond_opt=None, clip_opt=None, device='cpu'):
        from mixcl_arch.clip.cliphaze_cond import CLIPHazeCondConfig
        self.inputs = tuple(inputs)
        self.cfg = cfg = CLIPHazeCondConfig.from_opt(cond_opt)
        self.device = torch.device(device)
        self.prior = None
        density, embedding = 'density' in self.inputs, 'embedding' in self.inputs
        if embedding and cfg.embedding_source == 'standin' and cfg.standin_domain is None:
            raise ValueError('cliphaze_cond.embedding_source standin (the default of density_source: dcp) needs '
                             'cliphaze_cond.standin_domain (--standin-domain in the CLI): the domain label whose '
                             'stand-in vector the network was trained with, e.g. indoor or outdoor.')
        if (density and cfg.density_source == 'clip') or (embedding and cfg.embedding_source == 'clip'):
            from mixcl_arch.clip import CLIPPrior, CLIPWeightsError
            prior_opt = {k: v for k, v in (clip_opt or {}).items() if k not in COND_OPTION_KEYS}
            try:
                self.prior = CLIPPrior.from_opt(dict(prior_opt, device=str(self.device)))
            except CLIPWeightsError as err:
                raise RuntimeError(
                    f'CLIP weights are missing, so CLIPHazeNet\'s conditioning cannot be computed: {err}\nSet '
                    '`clip.pretrained` in the --opt YAML or --clip-pretrained FILE, or use the offline stand-in '
                    '(NOT CLIP; right for a network trained with it): cliphaze_cond.density_source: dcp, or '
                    '--density-source dcp --standin-domain <domain> in the CLI.') from err
        parts = []
        if density:
            parts.append('density ' + ('CLIP zero-shot' if cfg.density_source == 'clip' else 'DCP 1 - t'))
        if embedding:
            parts.append(f'embedding {cfg.embedding_source}'
                         + (f' ({cfg.standin_domain})' if cfg.embedding_source == 'standin' else ''))
        self.source = 'cliphaze: ' + ', '.join(parts)
        self.notes = []
        if (density and cfg.density_source == 'dcp') or (embedding and cfg.embedding_source == 'standin'):
            self.notes.append(f'CLIPHazeNet conditioning from the offline stand-in, NOT CLIP ({self.source}).')

    @torch.no_grad()
    def __call__(self, x):
        """(B, 3, H, W) in [0, 1] -> {'density': (B, 1, H, W), 'embedding': (B, E)}: the inputs the net takes,
        float32 on ``x``'s device."""
        from mixcl_arch.clip.cliphaze_cond import compute_cliphaze_conditioning, compute_density
        x = x.float().clamp(0, 1)
        if 'embedding' not in self.inputs:  # density_only: no embedding (and no stand-in domain) needed
            return {'density': compute_density(self.prior, x, self.cfg)}
        density, embedding = compute_cliphaze_conditioning(self.prior, x, self.cfg)
        out = {'density': density, 'embedding': embedding}  # embedding_only drops the density (cheap for dcp)
        return {k: out[k] for k in self.inputs}


class NetRestorer:
    """A trained network as a restorer; see :func:`build_restorer` for the arguments.

    Attributes:
        net (nn.Module): The network (eval mode, on ``device``).
        cond (ConditionProvider | CLIPHazeConditionProvider | None): Conditioning source, None for unconditioned
            nets.
        notes (list[str]): Messages for the user (fallbacks in use).
    """

    def __init__(self, net, cond=None, device='cpu', tile=None, tile_overlap=32, amp=None, name=None, tile_align=None):
        if amp not in AMP_DTYPES:
            raise ValueError(f'amp must be one of {[k for k in AMP_DTYPES if k]} or None, got {amp!r}.')
        if tile is not None and tile and (int(tile) <= int(tile_overlap) or int(tile_overlap) < 0):
            raise ValueError(f'Need tile > tile_overlap >= 0, got tile={tile}, tile_overlap={tile_overlap}.')
        self.device = torch.device(device)
        self.net = net.to(self.device).eval()
        self.cond = cond
        self.tile = int(tile) if tile else None
        self.tile_overlap = int(tile_overlap)
        # tiles stay on the net's down-sampling grid (MixDehazeNet: patch_size 4), see tiled_forward
        self.tile_align = net_tile_align(net, tile_align)
        self.amp_dtype = AMP_DTYPES[amp]
        self.name = name or type(net).__name__
        self.num_params = count_params(net)
        self.num_cond = int(getattr(net, 'num_cond', 0) or 0)
        self.data_range = getattr(net, 'data_range', 'unit')
        self.notes = list(cond.notes) if cond is not None else []
        if self.num_cond > 0 and cond is None:
            raise ValueError(f'{self.name} takes {self.num_cond} conditioning vectors; a ConditionProvider is needed.')
        if cliphaze_inputs(net) and cond is None:
            raise ValueError(f'{self.name} takes {" and ".join(cliphaze_inputs(net))}; a CLIPHazeConditionProvider is '
                             'needed.')

    def _forward(self, x, cond):
        amp = torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype else contextlib.nullcontext()
        with amp:
            y = run_net(self.net, x, cond, self.data_range)
        return y.float()

    @torch.no_grad()
    def __call__(self, x):
        """Dehaze a batch.

        Args:
            x (Tensor): (B, 3, H, W) float in [0, 1], any device.

        Returns:
            Tensor: (B, 3, H, W) float32 in [0, 1] on ``x``'s device.
        """
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f'Restorer input must be (B, 3, H, W), got {tuple(x.shape)}.')
        src_device = x.device
        x = x.to(self.device, torch.float32)
        # conditioning comes from the whole image once; every tile shares the vectors and gets its part of a map
        cond = self.cond(x) if self.cond is not None else None
        out = conditioned_tiled_forward(self._forward, x, cond, self.tile, self.tile_overlap, self.tile_align)
        return out.clamp_(0, 1).to(src_device)


def _lazy_baseline(method):
    module_name, cls_name = LAZY_BASELINES[method]
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ImportError(f"Method {method!r} needs {module_name} ({cls_name}), which cannot be imported: {err}. "
                          "Use --method net or hazy, or install the complete mixcl_arch package.") from err
    cls = getattr(module, cls_name, None)
    if cls is None:
        raise ImportError(f'Method {method!r}: {module_name} has no {cls_name}.')
    return cls


def build_restorer(method, weights=None, opt=None, device='cpu', param_text=None, **kwargs):
    """Build a restorer.

    Args:
        method (str): 'net', 'hazy', 'dcp' or 'dehazenet'.
        weights (str | None): Checkpoint for 'net' and 'dehazenet'.
        opt (dict | str | None): Options dict or YAML path ('net': ``network_g``, ``clip:``, ``path``).
        device (str | torch.device): 'cpu', 'cuda', 'cuda:1' or 'auto'.
        param_text (dict[str, str] | None): 'dcp' / 'dehazenet' options as ``KEY=VALUE`` text (the CLI's ``--param``,
            a benchmark method spec), read by the baseline's ``from_strings``; instead of ``kwargs``.
        **kwargs: For 'dcp' / 'dehazenet', typed options passed to the baseline class. For 'net':

            - ``param_key`` (str): weights key, default ``path.param_key_g``, else auto ('params_ema', then
              'params', then 'state_dict').
            - ``allow_unsafe_pickle`` (bool): fully unpickle a legacy checkpoint (it can run code; default False).
            - ``clip`` (dict): overrides of the ``clip:`` options, e.g. ``{'pretrained': '/path/clip.pt'}``.
            - ``cond_mode`` ('hard' | 'soft') and ``cond_extra`` (list): default from the YAML, else 'hard', [].
            - ``cond_fallback`` (str): 'error', 'none' or a domain name; used only when the CLIP weights are
              missing. Default: the YAML's ``clip.cond_fallback``, else 'error'.
            - ``feature_store`` (str): file with per-domain text features for a domain fallback (default: the
              YAML's ``clip.feature_store`` or the first dataset's ``feature_store``).
            - ``cliphaze_cond`` (dict): CLIPHazeNet: overrides of the YAML's ``cliphaze_cond:`` options (top level,
              else the first dataset's), e.g. ``{'density_source': 'dcp', 'standin_domain': 'indoor'}``; the
              density map and the embedding are computed on the whole image (:class:`CLIPHazeConditionProvider`),
              CLIP from ``clip``.
            - ``tile`` (int | None), ``tile_overlap`` (int, default 32): tiled inference; ``tile_align`` (int):
              tile grid, default the net's ``tile_align`` or ``patch_size`` attribute (4 for MixDehazeNet), else 1.
            - ``amp`` (None | 'fp16' | 'bf16'): autocast dtype.
            - ``strict`` (bool): exact checkpoint key match (default ``path.strict_load_g``, else True).
            - ``backend`` ('torch' (default) | 'onnxruntime' | 'auto'): 'onnxruntime' runs the net exported to ONNX
              (exported once per weights, :func:`mixcl_arch.export.cached_onnx`) with ONNX Runtime on the CPU and
              returns a :class:`mixcl_arch.export.OnnxRuntimeRunner` (``net`` None); 'auto' picks it where it is
              faster (:func:`mixcl_arch.export.resolve_backend`).

    Returns:
        A callable restorer: (B, 3, H, W) in [0, 1] -> (B, 3, H, W) in [0, 1], with ``name``, ``num_params``,
        ``net``.

    Raises:
        ValueError: Unknown method or bad options. RuntimeError: CLIP weights missing with no fallback (CLIPHazeNet:
            with CLIP conditioning).
        ImportError: A baseline module that is not available.
    """
    if method not in METHODS:
        raise ValueError(f'Unknown method {method!r}; expected one of {METHODS}.')
    device = resolve_device(device)
    if param_text:
        if method not in LAZY_BASELINES or kwargs:
            raise ValueError(f'param_text sets the options of dcp / dehazenet, alone; got method {method!r} and '
                             f'{sorted(kwargs)}.')
        extra = {'weights': weights} if method == 'dehazenet' else {}
        return _lazy_baseline(method).from_strings(param_text, device=str(device), **extra)
    if method == 'hazy':
        if kwargs:
            raise ValueError(f"Method 'hazy' takes no options, got {sorted(kwargs)}.")
        return HazyRestorer()
    if method == 'dcp':
        cls = _lazy_baseline('dcp')
        if 'device' in inspect.signature(cls).parameters and 'device' not in kwargs:
            kwargs['device'] = str(device)
        return cls(**kwargs)
    if method == 'dehazenet':
        return _lazy_baseline('dehazenet')(weights, device=str(device), **kwargs)

    allowed = {'param_key', 'clip', 'cond_mode', 'cond_extra', 'cond_fallback', 'feature_store', 'cliphaze_cond', 'tile',
               'tile_overlap', 'tile_align', 'amp', 'strict', 'allow_unsafe_pickle', 'backend'}
    unknown = set(kwargs) - allowed
    if unknown:
        raise ValueError(f"Unknown options for method 'net': {sorted(unknown)}; allowed: {sorted(allowed)}.")
    unsafe = kwargs.get('allow_unsafe_pickle', False)
    if not isinstance(unsafe, bool):
        raise ValueError(f'allow_unsafe_pickle must be true or false, got {unsafe!r}.')
    opt = load_options(opt)
    net, net_opt = build_net_from_checkpoint(weights, opt, kwargs.get('param_key'), kwargs.get('strict'), unsafe)
    cond = None
    num_cond = int(getattr(net, 'num_cond', 0) or 0)
    clip_opt = dict(opt.get('clip') or {})
    clip_opt.update(kwargs.get('clip') or {})
    if cliphaze_inputs(net):
        cond_opt = cliphaze_cond_options(opt)
        cond_opt.update(kwargs.get('cliphaze_cond') or {})
        cond = CLIPHazeConditionProvider(cliphaze_inputs(net), cond_opt, clip_opt, device)
    elif num_cond > 0:
        cond_mode = kwargs.get('cond_mode') or _cond_setting(opt, 'cond_mode') or 'hard'
        cond_extra = kwargs.get('cond_extra')
        if cond_extra is None:
            cond_extra = _cond_setting(opt, 'cond_extra') or []
        fallback = kwargs.get('cond_fallback') or clip_opt.get('cond_fallback') or 'error'
        if isinstance(fallback, dict):  # the model's YAML form {domain: outdoor}
            fallback = fallback.get('domain', 'error')
        feature_store = kwargs.get('feature_store') or _cond_setting(opt, 'feature_store')
        cond = ConditionProvider(num_cond, getattr(net, 'cond_dim', 512), clip_opt, cond_mode, cond_extra, fallback,
                                 feature_store, device)
    backend = resolve_backend(kwargs.get('backend') or 'torch', device, kwargs.get('amp'), type(net).__name__)
    if backend == 'onnxruntime':
        onnx_path, exported = cached_onnx(net, net_opt)
        restorer = OnnxRuntimeRunner(onnx_path, kwargs.get('tile'), kwargs.get('tile_overlap', 32), cond=cond)
    else:
        restorer = NetRestorer(net, cond, device, kwargs.get('tile'), kwargs.get('tile_overlap', 32),
                               kwargs.get('amp'), name=net_opt.get('type'), tile_align=kwargs.get('tile_align'))
    restorer.net_opt = net_opt
    for note in restorer.notes:
        warnings.warn(note, ConditioningFallbackWarning, stacklevel=2)
    if backend == 'onnxruntime' and exported:
        restorer.notes.append(f'exported the network to ONNX for ONNX Runtime once; later runs reuse {onnx_path}')
    return restorer
