"""One interface over every way this project can dehaze an image (the CLI and the benchmark harness use it).

A restorer maps a (B, 3, H, W) float tensor in [0, 1] to a tensor of the same shape in [0, 1] and has the attributes
``name`` (str), ``num_params`` (int) and ``net`` (``nn.Module`` or None). :func:`build_restorer` makes one:

- ``'net'``: a trained network (MixCLDehazeNet, MixDehazeNet, CLIPHazeNet or any registered arch) from a checkpoint,
  built from an options YAML's ``network_g``, the checkpoint's record or, for the MixDehazeNet family, inferred from
  the checkpoint's keys; its conditioning (MixCLDehazeNet's vectors, CLIPHazeNet's density map and embedding) comes
  from the one conditioner of :mod:`mixcl_arch.conditioning`, built online (from the images) from the YAML's
  ``conditioning:`` / ``clip:`` / ``cliphaze_cond:`` sections and the caller's overrides, with an explicit fallback
  when the CLIP weights are missing; optional seamless tiling and mixed precision;
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

from mixcl_arch.clip.cliphaze_cond import CLIPHazeCondConfig
from mixcl_arch.conditioning.conditioner import build_conditioner
from mixcl_arch.conditioning.config import ClipOptions, ConditioningConfig
from mixcl_arch.export import OnnxRuntimeRunner, cached_onnx, resolve_backend
from mixcl_arch.methods import METHODS
from mixcl_arch.utils.checkpoint import check_state_dict, extract_state_dict, infer_arch_from_state_dict, \
    load_checkpoint_file, read_checkpoint_meta
from mixcl_arch.utils.device import resolve_device  # noqa: F401  (public here too)
from mixcl_arch.utils.options import OptionError, load_yaml_file
from mixcl_arch.utils.net_call import amp_dtype, run_net
from mixcl_arch.utils.tiling import conditioned_tiled_forward, net_tile_align

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


class NetRestorer:
    """A trained network as a restorer; see :func:`build_restorer` for the arguments.

    Attributes:
        net (nn.Module): The network (eval mode, on ``device``).
        cond (mixcl_arch.conditioning.conditioner.Conditioner | None): The net's conditioner
            (:func:`~mixcl_arch.conditioning.conditioner.build_conditioner` with ``online=True``: it takes bare
            images), None for an unconditioned net.
        notes (list[str]): Messages for the user (fallbacks and stand-ins in use).
    """

    def __init__(self, net, cond=None, device='cpu', tile=None, tile_overlap=32, amp=None, name=None, tile_align=None):
        if tile is not None and tile and (int(tile) <= int(tile_overlap) or int(tile_overlap) < 0):
            raise ValueError(f'Need tile > tile_overlap >= 0, got tile={tile}, tile_overlap={tile_overlap}.')
        self.amp_dtype = amp_dtype(amp)
        self.device = torch.device(device)
        self.net = net.to(self.device).eval()
        self.cond = cond
        self.tile = int(tile) if tile else None
        self.tile_overlap = int(tile_overlap)
        # tiles stay on the net's down-sampling grid (MixDehazeNet: patch_size 4), see tiled_forward
        self.tile_align = net_tile_align(net, tile_align)
        self.name = name or type(net).__name__
        self.num_params = count_params(net)
        self.num_cond = int(getattr(net, 'num_cond', 0) or 0)
        self.data_range = getattr(net, 'data_range', 'unit')
        self.notes = list(cond.notes) if cond is not None else []

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


# build_restorer's conditioning keywords (the CLI's flags) -> the ConditioningConfig field each overrides
COND_OVERRIDES = {'cond_mode': 'mode', 'cond_extra': 'extra', 'cond_fallback': 'fallback', 'feature_store': 'store'}
# option key -> the mixcl-dehaze flag that overrides it, named next to the key in error messages
CLI_FLAGS = {'conditioning.mode': '--cond-mode', 'conditioning.extra': '--cond-extra',
             'conditioning.fallback': '--cond-fallback', 'conditioning.store': '--feature-store',
             'clip.model': '--clip-model', 'clip.pretrained': '--clip-pretrained',
             'cliphaze_cond.density_source': '--density-source', 'cliphaze_cond.standin_domain': '--standin-domain'}


def conditioning_config(opt, clip=None, cliphaze_cond=None, **overrides):
    """The conditioning config of an inference run: the option dict's sections, then the caller's overrides.

    Args:
        opt (dict): Options (the whole --opt YAML; {} for none).
        clip (dict | None): ``clip:`` options replacing the YAML's key by key.
        cliphaze_cond (dict | None): ``cliphaze_cond:`` options replacing the YAML's key by key (derived defaults such
            as ``embedding_source`` follow the merged options).
        **overrides: :data:`COND_OVERRIDES` keywords; None keeps the YAML's value.

    Returns:
        ConditioningConfig

    Raises:
        OptionError: Naming the key (an old-style key: its new place).
    """
    cfg = ConditioningConfig.from_options(opt)
    changes = {COND_OVERRIDES[k]: v for k, v in overrides.items() if v is not None}
    if clip:
        changes['clip'] = ClipOptions.from_dict({**cfg.clip.as_dict(), **clip})
    if cliphaze_cond:
        try:
            changes['cliphaze'] = CLIPHazeCondConfig.from_opt({**(opt.get('cliphaze_cond') or {}), **cliphaze_cond})
        except ValueError as err:
            raise OptionError(str(err)) from None
    return cfg.replace(**changes) if changes else cfg


@contextlib.contextmanager
def _naming_cli_flags():
    """Re-raise a ValueError that names option keys with the CLI flag of each key it names (:data:`CLI_FLAGS`)."""
    try:
        yield
    except ValueError as err:
        msg = str(err)
        flags = [f'{flag} sets {key}' for key, flag in CLI_FLAGS.items() if key in msg and flag not in msg]
        if not flags:
            raise
        raise (OptionError if isinstance(err, OptionError) else ValueError)(
            f'{msg} (command line: {"; ".join(flags)})') from err


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
        opt (dict | str | None): Options dict or YAML path ('net': ``network_g``, ``path``, and the conditioning
            sections ``conditioning:``, ``clip:``, ``cliphaze_cond:``).
        device (str | torch.device): 'cpu', 'cuda', 'cuda:1' or 'auto'.
        param_text (dict[str, str] | None): 'dcp' / 'dehazenet' options as ``KEY=VALUE`` text (the CLI's ``--param``,
            a benchmark method spec), read by the baseline's ``from_strings``; instead of ``kwargs``.
        **kwargs: For 'dcp' / 'dehazenet', typed options passed to the baseline class. For 'net':

            - ``param_key`` (str): weights key, default ``path.param_key_g``, else auto ('params_ema', then
              'params', then 'state_dict').
            - ``allow_unsafe_pickle`` (bool): fully unpickle a legacy checkpoint (it can run code; default False).
            - conditioning overrides (None: the YAML's, :mod:`mixcl_arch.conditioning.config`): ``clip`` (dict):
              ``clip:`` options, e.g. ``{'pretrained': '/path/clip.pt'}``; ``cond_mode`` ('hard' | 'soft'):
              ``conditioning.mode``; ``cond_extra`` (list): ``conditioning.extra``; ``cond_fallback`` (str):
              ``conditioning.fallback`` ('error', 'none' or a domain name; used when the CLIP weights are missing);
              ``feature_store`` (str): ``conditioning.store`` (per-domain text features of a domain fallback);
              ``cliphaze_cond`` (dict): CLIPHazeNet's ``cliphaze_cond:`` options, e.g. ``{'density_source': 'dcp',
              'standin_domain': 'indoor'}``. The conditioner is built online (:func:`conditioning_config`): every
              image is conditioned from itself, on the whole image (tiles share it).
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
        ValueError: Unknown method or bad options (conditioning options name the YAML key and the CLI flag).
        RuntimeError: CLIP weights missing with ``conditioning.fallback`` error.
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

    allowed = {'param_key', 'tile', 'tile_overlap', 'tile_align', 'amp', 'strict', 'allow_unsafe_pickle', 'backend',
               'clip', 'cliphaze_cond', *COND_OVERRIDES}
    unknown = set(kwargs) - allowed
    if unknown:
        raise ValueError(f"Unknown options for method 'net': {sorted(unknown)}; allowed: {sorted(allowed)}.")
    unsafe = kwargs.get('allow_unsafe_pickle', False)
    if not isinstance(unsafe, bool):
        raise ValueError(f'allow_unsafe_pickle must be true or false, got {unsafe!r}.')
    opt = load_options(opt)
    with _naming_cli_flags():  # bad conditioning options fail before the checkpoint is read
        cfg = conditioning_config(opt, **{k: kwargs.get(k) for k in ('clip', 'cliphaze_cond', *COND_OVERRIDES)})
    net, net_opt = build_net_from_checkpoint(weights, opt, kwargs.get('param_key'), kwargs.get('strict'), unsafe)
    with _naming_cli_flags():
        cond = build_conditioner(cfg, net, device, online=True)
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
