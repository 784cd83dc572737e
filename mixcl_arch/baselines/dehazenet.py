"""DehazeNet recovery: from a transmission map to the clear image, and the DehazeNet restorer.

Steps (every parameter is a key of :data:`DEHAZENET_RECOVERY_DEFAULTS`):

1. atmospheric light A: among the ``top_ratio`` (1%) pixels with the lowest predicted t (the haziest ones), the
   brightest grey value (BT.601 luma) of the input; ``atmo_mode='grey'`` (default) uses that grey value for all three
   channels, matching DehazeNet's training with a white A = 1; ``atmo_mode='color'`` takes that pixel's RGB instead;
   ``a_min`` is a lower bound on A;
2. refinement of t with the guided filter of the DCP baseline (:func:`mixcl_arch.baselines.guided_filter.
   guided_filter`, guide = grey input, radius ``gf_radius`` = 30, ``gf_eps`` = 1e-3), then clamped to [0, 1];
   the network's map is already smooth over its 22x22 receptive field, so the filter mainly snaps t to image edges;
3. J = (I - A) / max(t, t0) + A with ``t0`` = 0.1, clamped to [0, 1] when ``clamp``.

``a_normalize`` (default true, :func:`dehazenet_dehaze`): DehazeNet is trained with A = 1, and I / A = (J / A) t +
(1 - t) is the same model with A = 1, so after a first pass gives t and A (step 1) the network runs a second time
on clamp(I / A, 0, 1) and that t is used. Without it (the paper's single pass) a darker A (e.g. 0.75) makes the haze
look thinner than in training and t is over-estimated (under-dehazed output). False gives the single pass.

The network runs on the whole image (or on overlapping tiles with ``tile``; t is local, each output pixel sees 11 px
on each side, and tiled_forward ignores the outer quarter of an overlap, so tiles overlapping by >= 44 px give the
same map; smaller overlaps are raised to 44); A and the guided filter always use the whole image.
"""
import math

import torch

from mixcl_arch.baselines.common import check_image, grey, to_bool
from mixcl_arch.baselines.guided_filter import guided_filter

__all__ = ['DEHAZENET_RECOVERY_DEFAULTS', 'estimate_atmospheric_light_from_t', 'dehazenet_recover',
           'dehazenet_dehaze', 'predict_transmission', 'load_dehazenet', 'DehazeNetRestorer']

DEHAZENET_RECOVERY_DEFAULTS = {
    'a_normalize': True,
    'top_ratio': 0.01,
    'atmo_mode': 'grey',
    'a_min': 0.05,
    'refine': True,
    'gf_radius': 30,
    'gf_eps': 1e-3,
    't0': 0.1,
    'clamp': True,
}
DEHAZENET_ATMO_MODES = ('grey', 'color')




def estimate_atmospheric_light_from_t(x, t, top_ratio=0.01, mode='grey'):
    """A from the haziest pixels: the brightest grey value among the ``top_ratio`` pixels of lowest t.

    Args:
        x (Tensor): (B, 3, H, W) hazy image in [0, 1].
        t (Tensor): (B, 1, H, W) transmission.
        top_ratio (float): Fraction of pixels kept (at least one).
        mode (str): 'grey': that pixel's grey value on all channels; 'color': that pixel's RGB.

    Returns:
        Tensor: (B, 3) atmospheric light.
    """
    if mode not in DEHAZENET_ATMO_MODES:
        raise ValueError(f'atmo_mode must be one of {DEHAZENET_ATMO_MODES}, got {mode!r}.')
    b, c, h, w = x.shape
    if t.shape != (b, 1, h, w):
        raise ValueError(f't must have shape {(b, 1, h, w)} to match x, got {tuple(t.shape)}.')
    k = max(1, int(math.floor(h * w * float(top_ratio))))
    idx = t.reshape(b, h * w).topk(k, dim=1, largest=False).indices  # (B, k)
    luma = grey(x).reshape(b, h * w).gather(1, idx)  # (B, k)
    best = luma.argmax(dim=1, keepdim=True)  # (B, 1)
    if mode == 'grey':
        return luma.gather(1, best).expand(b, c).contiguous()
    pix = idx.gather(1, best)  # (B, 1) flat pixel index
    return x.reshape(b, c, h * w).gather(2, pix[:, None, :].expand(b, c, 1))[..., 0]


def dehazenet_recover(x, t, top_ratio=0.01, atmo_mode='grey', a_min=0.05, refine=True, gf_radius=30, gf_eps=1e-3,
                      t0=0.1, clamp=True, A=None, return_all=False):
    """Recover the clear image from a hazy image and its transmission (atmospheric scattering model).

    Args:
        x (Tensor): (B, 3, H, W) hazy RGB in [0, 1].
        t (Tensor): (B, 1, H, W) transmission (e.g. DehazeNet's output).
        top_ratio (float): Fraction of lowest-t pixels searched for A (0.01 = 1%).
        atmo_mode (str): 'grey' or 'color', see :func:`estimate_atmospheric_light_from_t`.
        a_min (float): Lower bound on A.
        refine (bool): Refine t with the guided filter (guide: grey input).
        gf_radius (int): Guided filter radius.
        gf_eps (float): Guided filter regularisation.
        t0 (float): Lower bound on t in the division.
        clamp (bool): Clamp J to [0, 1].
        A (Tensor | float | None): Known atmospheric light ((B, 3), (3,) or a scalar); None estimates it.
        return_all (bool): Return a dict of intermediates instead of J.

    Returns:
        Tensor | dict: J (B, 3, H, W); with ``return_all`` a dict with 'J', 'A' (B, 3), 't_raw' (the input t) and
        't' (B, 1, H, W) the refined, clamped transmission used.
    """
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
        A = estimate_atmospheric_light_from_t(x, t_raw, top_ratio, atmo_mode)
    else:
        A = torch.as_tensor(A, dtype=work, device=x.device)
        A = A.reshape(1, 1).expand(x.shape[0], 3) if A.numel() == 1 else A.reshape(-1, 3).expand(x.shape[0], 3)
    A = A.clamp(min=float(a_min))
    t_ref = guided_filter(grey(x), t_raw, gf_radius, gf_eps) if refine else t_raw
    t_ref = t_ref.clamp(0.0, 1.0)
    a4 = A[:, :, None, None]
    J = (x - a4) / t_ref.clamp(min=float(t0)) + a4
    if clamp:
        J = J.clamp(0.0, 1.0)
    J = J.to(in_dtype)
    if return_all:
        return {'J': J, 'A': A, 't_raw': t_raw, 't': t_ref}
    return J


# each t pixel depends on 11 px on each side (5x5 conv 2, 7x7 conv 3, 7x7 pool 3, 6x6 conv 3); tiled_forward gives
# weight 0 to the outer quarter of every overlap, so exact tiling needs an overlap of at least 4 * 11
SEAMLESS_OVERLAP = 44


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


def dehazenet_dehaze(net, x, tile=None, tile_overlap=32, **params):
    """DehazeNet end to end: transmission from ``net`` (twice with ``a_normalize``), then :func:`dehazenet_recover`.

    Args:
        net (nn.Module): Transmission net, (B, 3, H, W) -> (B, 1, H, W), on x's device.
        x (Tensor): (B, 3, H, W) hazy image in [0, 1].
        tile (int | None): Tile size of the network pass (None / 0: whole image).
        tile_overlap (int): Tile overlap in pixels.
        **params: Keys of :data:`DEHAZENET_RECOVERY_DEFAULTS`.

    Returns:
        dict: 'J' (B, 3, H, W), 'A' (B, 3), 't_raw' (B, 1, H, W) the network's t used (second pass with
        ``a_normalize``), 't' (B, 1, H, W) refined.
    """
    check_image(x)
    q = check_recovery_params(params)
    rec = {k: v for k, v in q.items() if k != 'a_normalize'}
    t = predict_transmission(net, x, tile, tile_overlap)
    A = None
    if q['a_normalize']:
        A = estimate_atmospheric_light_from_t(x, t, q['top_ratio'], q['atmo_mode']).clamp(min=q['a_min'])
        t = predict_transmission(net, (x / A[:, :, None, None]).clamp(0.0, 1.0), tile, tile_overlap)
    return dehazenet_recover(x, t, A=A, return_all=True, **rec)


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
        **params: Recovery options (:data:`DEHAZENET_RECOVERY_DEFAULTS`: a_normalize, top_ratio, atmo_mode, a_min,
            refine, gf_radius, gf_eps, t0, clamp), and ``param_key`` ('params'), ``tile`` (0 = whole image),
            ``tile_overlap`` (32) and ``allow_unsafe_pickle`` (False; fully unpickle a legacy checkpoint, which can
            run code). Strings such as '0.05' or 'true' are accepted (CLI parsing).

    Attributes:
        name (str): 'dehazenet'. num_params (int): 8305 with the default sizes. net (nn.Module): the DehazeNet.

    Raises:
        ValueError: Unknown or out-of-range options, missing weights argument, an unavailable CUDA device.
        FileNotFoundError: The weights file does not exist.
    """

    name = 'dehazenet'
    EXTRA_KEYS = ('param_key', 'tile', 'tile_overlap', 'allow_unsafe_pickle')

    def __init__(self, weights=None, device='cpu', **params):
        unknown = sorted(set(params) - set(DEHAZENET_RECOVERY_DEFAULTS) - set(self.EXTRA_KEYS))
        if unknown:
            raise ValueError(f'Unknown DehazeNet option(s) {unknown}; allowed: '
                             f'{sorted(DEHAZENET_RECOVERY_DEFAULTS) + sorted(self.EXTRA_KEYS)}.')
        self.params = check_recovery_params(params)
        self.tile = int(params.get('tile') or 0)
        self.tile_overlap = int(params.get('tile_overlap', 32))
        if self.tile < 0 or self.tile_overlap < 0 or (self.tile and self.tile_overlap >= self.tile):
            raise ValueError(f'Need tile = 0 (off) or tile > tile_overlap >= 0, got {self.tile}, {self.tile_overlap}.')
        if device is None or str(device) == 'auto':
            device = 'cuda' if torch.cuda.is_available() else 'cpu'
        self.device = torch.device(device)
        if self.device.type == 'cuda' and not torch.cuda.is_available():
            raise ValueError(f'DehazeNet device {self.device} requested but CUDA is not available.')
        unsafe = to_bool(params.get('allow_unsafe_pickle', False), 'allow_unsafe_pickle')
        self.net = load_dehazenet(weights, param_key=params.get('param_key') or 'params',
                                  allow_unsafe_pickle=unsafe).to(self.device)
        self.num_params = sum(p.numel() for p in self.net.parameters())

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
        out = dehazenet_dehaze(self.net, xd, self.tile, self.tile_overlap, **self.params)
        out['J'] = out['J'].to(x.dtype)
        return {k: v.to(x.device) for k, v in out.items()}

    def __call__(self, x):
        """(B, 3, H, W) hazy in [0, 1] -> (B, 3, H, W) dehazed in [0, 1], on the input's device and dtype."""
        return self.estimate(x)['J']

    def __repr__(self):
        return f'DehazeNetRestorer(device={self.device}, tile={self.tile}, {self.params})'


def check_recovery_params(params):
    """Merge ``params`` over :data:`DEHAZENET_RECOVERY_DEFAULTS`, convert types and check ranges.

    Keys outside the defaults are ignored (callers check unknown keys themselves).

    Returns:
        dict: Exactly the keys of :data:`DEHAZENET_RECOVERY_DEFAULTS`.

    Raises:
        ValueError: Values of the wrong type or out of range.
    """
    p = dict(DEHAZENET_RECOVERY_DEFAULTS)
    p.update({k: v for k, v in (params or {}).items() if k in DEHAZENET_RECOVERY_DEFAULTS})
    try:
        q = {
            'a_normalize': to_bool(p['a_normalize'], 'a_normalize'),
            'top_ratio': float(p['top_ratio']),
            'atmo_mode': str(p['atmo_mode']),
            'a_min': float(p['a_min']),
            'refine': to_bool(p['refine'], 'refine'),
            'gf_radius': int(p['gf_radius']),
            'gf_eps': float(p['gf_eps']),
            't0': float(p['t0']),
            'clamp': to_bool(p['clamp'], 'clamp'),
        }
    except (TypeError, ValueError) as err:
        raise ValueError(f'Bad DehazeNet recovery option value: {err}') from err
    checks = [
        (0.0 < q['top_ratio'] <= 1.0, 'top_ratio must be in (0, 1]'),
        (q['atmo_mode'] in DEHAZENET_ATMO_MODES, f'atmo_mode must be one of {DEHAZENET_ATMO_MODES}'),
        (0.0 < q['a_min'] <= 1.0, 'a_min must be in (0, 1]'),
        (q['gf_radius'] >= 0, 'gf_radius must be >= 0'),
        (q['gf_eps'] > 0.0, 'gf_eps must be > 0'),
        (0.0 < q['t0'] <= 1.0, 't0 must be in (0, 1]'),
    ]
    for ok, msg in checks:
        if not ok:
            raise ValueError(f'DehazeNet recovery: {msg}; got {q}.')
    return q

