"""DehazeNet recovery: from a transmission map to the clear image, and the DehazeNet restorer.

Steps (every option is a field of :class:`DehazeNetRecoveryParams`, frozen and checked on construction; the names
are the DCP baseline's for the same ideas):

1. atmospheric light A: among the ``top_ratio`` (1%) pixels with the lowest predicted t (the haziest ones), the one
   with the brightest grey value (BT.601 luma) of the input; ``atmo_mode='brightest_grey'`` (default) uses that grey
   value for all three channels, matching DehazeNet's training with a white A = 1; ``'brightest'`` takes that
   pixel's RGB instead (``'mean'`` and ``'channel_max'`` as for DCP); ``a_min`` is a lower bound on A;
2. refinement of t with the guided filter of the DCP baseline (:func:`mixcl_arch.baselines.guided_filter.
   guided_filter`, guide = grey input, radius ``gf_radius`` = 30, ``gf_eps`` = 1e-3; ``gf_window`` /
   ``gf_border`` as for DCP), then clamped to [0, 1]; the network's map is already smooth over its 22x22 receptive
   field, so the filter mainly snaps t to image edges;
3. J = (I - A) / max(t, t0) + A with ``t0`` = 0.1, clamped to [0, 1] when ``clamp``.

``a_normalize`` (default true, :func:`dehazenet_dehaze`): DehazeNet is trained with A = 1, and I / A = (J / A) t +
(1 - t) is the same model with A = 1, so after a first pass gives t and A (step 1) the network runs a second time
on clamp(I / A, 0, 1) and that t is used. Without it (the paper's single pass) a darker A (e.g. 0.75) makes the haze
look thinner than in training and t is over-estimated (under-dehazed output). False gives the single pass.

The network runs on the whole image (or on overlapping tiles with ``tile`` / ``tile_overlap``; t is local, each
output pixel sees 11 px on each side, and tiled_forward ignores the outer quarter of an overlap, so tiles overlapping
by >= 44 px give the same map: the default ``tile_overlap``, and a smaller one is raised to it with a warning); A and
the guided filter always use the whole image.
"""
import dataclasses
import functools
import typing
import warnings

import torch

from mixcl_arch.baselines.common import RecoveryParams, atmospheric_light, check_atmo_mode, check_fraction, \
    check_image, check_non_negative_int, check_positive, grey, option, params_from, parse_text
from mixcl_arch.baselines.guided_filter import guided_filter
from mixcl_arch.utils.device import resolve_device
from mixcl_arch.utils.options import OptionError, check_bool, check_int, check_str

__all__ = ['DehazeNetRecoveryParams', 'estimate_atmospheric_light_from_t', 'dehazenet_recover', 'dehazenet_dehaze',
           'predict_transmission', 'load_dehazenet', 'DehazeNetRestorer']


# each t pixel depends on 11 px on each side (5x5 conv 2, 7x7 conv 3, 7x7 pool 3, 6x6 conv 3); tiled_forward gives
# weight 0 to the outer quarter of every overlap, so exact tiling needs an overlap of at least 4 * 11
SEAMLESS_OVERLAP = 44


@dataclasses.dataclass(frozen=True)
class DehazeNetRecoveryParams(RecoveryParams):
    """Options of DehazeNet's recovery (YAML ``val.recovery``, ``--param`` of ``--method dehazenet``), checked on
    construction (see :class:`~mixcl_arch.baselines.common.BaselineParams`: ``from_strings`` for ``KEY=VALUE``
    text, ``from_mapping`` for YAML).

    The options shared with DCP are those of :class:`~mixcl_arch.baselines.common.RecoveryParams`, here with
    DehazeNet's defaults: ``top_ratio`` 0.01 (the 1% lowest-t pixels), ``atmo_mode`` 'brightest_grey' (a grey A, as
    in training, see :func:`estimate_atmospheric_light_from_t`), ``a_min`` 0.05, ``gf_radius`` 30 and ``gf_eps`` 1e-3;
    ``refine``, ``gf_window``, ``gf_border``, ``t0`` (0.1) and ``clamp`` as for DCP.

    Attributes:
        a_normalize (bool): Second network pass on clamp(I / A, 0, 1) (see the module docstring); false: one pass.
        tile (int | None): Tile size of the network pass (None / 0: whole image); A and the guided filter always use
            the whole image.
        tile_overlap (int): Tile overlap in pixels, < ``tile``; default :data:`SEAMLESS_OVERLAP` (44), the smallest
            seamless one: a smaller value is raised to it, with a warning.
    """
    top_ratio: float = option(0.01, check_fraction)
    atmo_mode: str = option('brightest_grey', check_atmo_mode)
    a_min: float = option(0.05, check_fraction)
    gf_radius: int = option(30, check_non_negative_int)
    gf_eps: float = option(1e-3, check_positive)
    a_normalize: bool = option(True, check_bool)
    tile: int | None = option(None, functools.partial(check_int, optional=True, ge=0))
    tile_overlap: int = option(SEAMLESS_OVERLAP, check_non_negative_int)

    SECTION: typing.ClassVar[str] = 'dehazenet'

    def check(self, where):
        if self.tile and self.tile_overlap >= self.tile:
            raise OptionError(f'{where}.tile_overlap: expected an integer < tile ({self.tile}), got '
                              f'{self.tile_overlap}.')
        if self.tile and self.tile_overlap < SEAMLESS_OVERLAP:
            warnings.warn(f'{where}.tile_overlap: {self.tile_overlap} px is raised to {SEAMLESS_OVERLAP} px, the '
                          'smallest overlap that makes DehazeNet tiles seamless.', stacklevel=4)


def estimate_atmospheric_light_from_t(x, t, top_ratio=0.01, mode='brightest_grey'):
    """A from the haziest pixels: the brightest grey value among the ``top_ratio`` pixels of lowest t.

    Args:
        x (Tensor): (B, 3, H, W) hazy image in [0, 1].
        t (Tensor): (B, 1, H, W) transmission.
        top_ratio (float): Fraction of pixels kept (at least one).
        mode (str): 'brightest_grey': the brightest (BT.601 luma) pixel's grey value on all channels; 'brightest':
            that pixel's RGB; 'mean' / 'channel_max': see :func:`mixcl_arch.baselines.common.atmospheric_light`.

    Returns:
        Tensor: (B, 3) atmospheric light.
    """
    b, c, h, w = x.shape
    if t.shape != (b, 1, h, w):
        raise ValueError(f't must have shape {(b, 1, h, w)} to match x, got {tuple(t.shape)}.')
    return atmospheric_light(x, t, top_ratio, mode, brightness='luma', largest=False)


def dehazenet_recover(x, t, params=None, A=None, return_all=False):
    """Recover the clear image from a hazy image and its transmission (atmospheric scattering model).

    Args:
        x (Tensor): (B, 3, H, W) hazy RGB in [0, 1].
        t (Tensor): (B, 1, H, W) transmission (e.g. DehazeNet's output).
        params (DehazeNetRecoveryParams | None): Options (None: the defaults); ``a_normalize`` and the tiling do
            not apply here (see :func:`dehazenet_dehaze`).
        A (Tensor | float | None): Known atmospheric light ((B, 3), (3,) or a scalar); None estimates it.
        return_all (bool): Return a dict of intermediates instead of J.

    Returns:
        Tensor | dict: J (B, 3, H, W); with ``return_all`` a dict with 'J', 'A' (B, 3), 't_raw' (the input t) and
        't' (B, 1, H, W) the refined, clamped transmission used.
    """
    p = _params(params)
    check_image(x)
    if not torch.is_tensor(t) or t.dim() != 4 or t.shape[1] != 1 or t.shape[0] != x.shape[0] \
            or t.shape[-2:] != x.shape[-2:]:
        shape = tuple(t.shape) if torch.is_tensor(t) else type(t).__name__
        raise ValueError(f't must be (B, 1, H, W) = {(x.shape[0], 1, *x.shape[-2:])} to match x, got {shape}.')
    in_dtype = x.dtype
    work = in_dtype if in_dtype in (torch.float32, torch.float64) else torch.float32
    x = x.to(work)
    t_raw = t.to(device=x.device, dtype=work)
    if A is None:
        A = estimate_atmospheric_light_from_t(x, t_raw, p.top_ratio, p.atmo_mode)
    else:
        A = torch.as_tensor(A, dtype=work, device=x.device)
        A = A.reshape(1, 1).expand(x.shape[0], 3) if A.numel() == 1 else A.reshape(-1, 3).expand(x.shape[0], 3)
    A = A.clamp(min=p.a_min)
    t_ref = guided_filter(grey(x), t_raw, p.gf_radius, p.gf_eps, p.gf_window, p.gf_border) if p.refine else t_raw
    t_ref = t_ref.clamp(0.0, 1.0)
    a4 = A[:, :, None, None]
    J = (x - a4) / t_ref.clamp(min=p.t0) + a4
    if p.clamp:
        J = J.clamp(0.0, 1.0)
    J = J.to(in_dtype)
    if return_all:
        return {'J': J, 'A': A, 't_raw': t_raw, 't': t_ref}
    return J


def _params(params):
    """The recovery options of a ``params`` argument (None: the defaults)."""
    p = DehazeNetRecoveryParams() if params is None else params
    if not isinstance(p, DehazeNetRecoveryParams):
        raise TypeError(f'params must be a DehazeNetRecoveryParams (e.g. DehazeNetRecoveryParams(t0=0.2)), got '
                        f'{type(p).__name__}.')
    return p


def predict_transmission(net, x, tile=None, tile_overlap=SEAMLESS_OVERLAP):
    """DehazeNet's transmission map of the input's size, optionally computed on overlapping tiles.

    Args:
        net (nn.Module): A :class:`mixcl_arch.archs.dehazenet_arch.DehazeNet` (or any net mapping (B, 3, H, W) to
            (B, 1, H, W)).
        x (Tensor): (B, 3, H, W) in [0, 1], on the net's device.
        tile (int | None): Tile size (None / 0: whole image).
        tile_overlap (int): Tile overlap in pixels; raised to :data:`SEAMLESS_OVERLAP` (44) when smaller.

    Returns:
        Tensor: (B, 1, H, W).
    """
    if not tile:
        return net(x)
    from mixcl_arch.utils.tiling import tiled_forward
    overlap = max(int(tile_overlap), SEAMLESS_OVERLAP)
    if overlap >= int(tile):
        raise ValueError(f'DehazeNet tiles need tile > {overlap} px (the overlap that makes them seamless), got '
                         f'tile={tile}.')
    return tiled_forward(net, x, tile=int(tile), overlap=overlap, out_channels=1)


def dehazenet_dehaze(net, x, params=None):
    """DehazeNet end to end: transmission from ``net`` (twice with ``a_normalize``), then :func:`dehazenet_recover`.

    Args:
        net (nn.Module): Transmission net, (B, 3, H, W) -> (B, 1, H, W), on x's device.
        x (Tensor): (B, 3, H, W) hazy image in [0, 1].
        params (DehazeNetRecoveryParams | None): Options, including the tiling of the network pass (None: the
            defaults).

    Returns:
        dict: 'J' (B, 3, H, W), 'A' (B, 3), 't_raw' (B, 1, H, W) the network's t used (second pass with
        ``a_normalize``), 't' (B, 1, H, W) refined.
    """
    p = _params(params)
    check_image(x)
    t = predict_transmission(net, x, p.tile, p.tile_overlap)
    A = None
    if p.a_normalize:
        A = estimate_atmospheric_light_from_t(x, t, p.top_ratio, p.atmo_mode).clamp(min=p.a_min)
        t = predict_transmission(net, (x / A[:, :, None, None]).clamp(0.0, 1.0), p.tile, p.tile_overlap)
    return dehazenet_recover(x, t, p, A=A, return_all=True)


def load_dehazenet(weights, param_key='params', strict=True, allow_unsafe_pickle=False, **net_opt):
    """Build a :class:`DehazeNet` (eval mode, CPU, frozen) and load BasicSR / bare / safetensors weights into it.

    Args:
        weights (str): Checkpoint, e.g. ``experiments/DehazeNet_demo/models/net_g_latest.pth``.
        param_key (str | None): Key to read ('params', which also takes a bare state dict; 'params_ema'; None:
            auto, ``params_ema`` first). An explicit key the file lacks is an error.
        strict (bool): Require an exact key match.
        allow_unsafe_pickle (bool): Fully unpickle a legacy file that ``weights_only`` refuses (can run code).
        **net_opt: DehazeNet arguments (layer sizes) matching how the weights were trained.

    Raises:
        ValueError: No weights given, a file that does not load safely, or keys/shapes that do not fit.
        FileNotFoundError: missing file.
    """
    from mixcl_arch.archs.dehazenet_arch import DehazeNet
    from mixcl_arch.utils.checkpoint import load_network_weights
    if not weights:
        raise ValueError('DehazeNet needs trained weights: pass --weights FILE (train them with '
                         '`python mixcl_arch/train.py -opt options/train/train_DehazeNet_demo.yml`, see '
                         'docs/dehazenet.md).')
    net = DehazeNet(**net_opt)
    load_network_weights(net, weights, param_key=param_key, strict=strict, allow_unsafe_pickle=allow_unsafe_pickle)
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


class DehazeNetRestorer:
    """Restorer interface (see ``mixcl_arch.restorers``) around :func:`dehazenet_dehaze`.

    Args:
        weights (str): Trained DehazeNet checkpoint (BasicSR ``params`` / ``params_ema`` or a bare state dict).
        device (str | torch.device): 'cpu', 'cuda', 'cuda:1' or 'auto'. Inputs are moved there and back.
        params (DehazeNetRecoveryParams | None): The recovery and tiling options; or give them as keywords instead.
        param_key (str | None): Weights key ('params', which also takes a bare state dict; None: 'params').
        allow_unsafe_pickle (bool): Fully unpickle a legacy checkpoint (it can run code).
        **options: Typed :class:`DehazeNetRecoveryParams` fields (a_normalize, top_ratio, atmo_mode, a_min, refine,
            gf_radius, gf_window, gf_border, gf_eps, t0, clamp, tile, tile_overlap), read by
            :meth:`DehazeNetRecoveryParams.from_mapping`. ``KEY=VALUE`` text goes through :meth:`from_strings`.

    Attributes:
        name (str): 'dehazenet'. num_params (int): 8305 with the default sizes. net (nn.Module): the DehazeNet.

    Raises:
        ValueError: Unknown or out-of-range options, missing weights argument, an unavailable CUDA device.
        FileNotFoundError: The weights file does not exist.
    """

    name = 'dehazenet'
    # loading options beside the recovery options: (type, check) for KEY=VALUE text
    LOAD_OPTIONS = {'param_key': (str | None, functools.partial(check_str, optional=True)),
                    'allow_unsafe_pickle': (bool, check_bool)}

    def __init__(self, weights=None, device='cpu', params=None, param_key='params', allow_unsafe_pickle=False,
                 **options):
        for key, value in (('param_key', param_key), ('allow_unsafe_pickle', allow_unsafe_pickle)):
            self.LOAD_OPTIONS[key][1](f'{DehazeNetRecoveryParams.SECTION}.{key}', value)
        self.params = params_from(DehazeNetRecoveryParams, params, options, extra_keys=tuple(self.LOAD_OPTIONS))
        self.device = resolve_device(device)
        self.net = load_dehazenet(weights, param_key=param_key or 'params',
                                  allow_unsafe_pickle=allow_unsafe_pickle).to(self.device)
        self.num_params = sum(p.numel() for p in self.net.parameters())

    @classmethod
    def from_strings(cls, strings, weights=None, device='cpu'):
        """Build from ``KEY=VALUE`` text (the CLI's ``--param``, a benchmark method spec): the loading options of
        :attr:`LOAD_OPTIONS` and :meth:`DehazeNetRecoveryParams.from_strings` for the rest.

        Raises:
            ValueError: Unknown keys, unreadable text, values out of range.
        """
        rest = dict(strings)
        load = {key: parse_text(f'{DehazeNetRecoveryParams.SECTION}.{key}', rest.pop(key), hint, check)
                for key, (hint, check) in cls.LOAD_OPTIONS.items() if key in rest}
        params = DehazeNetRecoveryParams.from_strings(rest, extra_keys=tuple(cls.LOAD_OPTIONS))
        return cls(weights, device=device, params=params, **load)

    @torch.no_grad()
    def estimate(self, x):
        """Every intermediate for a batch, on the input's device.

        Args:
            x (Tensor): (B, 3, H, W) in [0, 1].

        Returns:
            dict: 'J' (B, 3, H, W), 'A' (B, 3), 't_raw' (network output) and 't' (refined), (B, 1, H, W).
        """
        check_image(x)
        xd = x.to(self.device, torch.float32)
        out = dehazenet_dehaze(self.net, xd, self.params)
        out['J'] = out['J'].to(x.dtype)
        return {k: v.to(x.device) for k, v in out.items()}

    def __call__(self, x):
        """(B, 3, H, W) hazy in [0, 1] -> (B, 3, H, W) dehazed in [0, 1], on the input's device and dtype."""
        return self.estimate(x)['J']

    def __repr__(self):
        return f'DehazeNetRestorer(device={self.device}, {self.params})'
