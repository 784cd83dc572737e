"""CLIPHazeNet: a hybrid selective-scan (Mamba) + window-attention U-Net whose paths are fused by a CLIP-guided CAM.

CLIPHaze-style, built from the paper's description (Zhang et al., "Adapt CLIP as Aggregation Instructor for Image
Dehazing", arXiv 2408.12317); the authors' code is unpublished, so every choice not in the abstract is ours and an
option. Every block runs, after a LayerNorm, a 2-D selective scan (VMamba/MambaIR style, four scan directions) for
global context and Swin-style window self-attention for local detail in parallel; the CLIP-instructed Aggregation
Module (CAM) mixes them per pixel, guided by a haze-density map (explicit) and an image embedding (implicit, FiLM).

Memory: window attention is O(H * W * window^2) and the scan never holds more than ``scan_max_elements`` states,
so no (H * W)^2 matrix and no (H * W * state) tensor of a whole image is ever built.
"""
import dataclasses
import math

import torch
from basicsr.utils.registry import ARCH_REGISTRY
from torch import nn as nn
from torch.nn import functional as F

from mixcl_arch.archs.mixdehazenet_arch import DATA_RANGES
from mixcl_arch.ops.selective_scan import DEFAULT_MAX_ELEMENTS, SCAN_IMPLS, resolve_scan_impl, selective_scan

CLIPHAZE_WIDTHS = {'T': 24, 'S': 32, 'B': 48}
CAM_MODES = ('full', 'none', 'density_only', 'embedding_only')
PATHS = ('ssm', 'attention', 'both')
NUM_LEVELS = 3
_ATTN_MAX_ELEMENTS = 2**24  # attention scores materialised at once (windows are processed in groups)


@dataclasses.dataclass(frozen=True)
class CLIPHazeConfig:
    """Validated options of :class:`CLIPHazeNet` (see its docstring for their meaning)."""
    width: int
    depths: tuple
    bottleneck_depth: int
    decoder_depths: tuple
    window_size: int
    num_heads: int
    mlp_ratio: float
    d_state: int
    expand: int
    cam: str
    paths: str
    embed_dim: int
    film_hidden: int
    scan_impl: str
    scan_max_elements: int
    data_range: str

    def __post_init__(self):
        for name in ('depths', 'decoder_depths'):
            value = getattr(self, name)
            if len(value) != NUM_LEVELS or min(value) < 1:
                raise ValueError(f'CLIPHazeNet {name} needs {NUM_LEVELS} ints >= 1, got {list(value)}.')
        positive = ('width', 'bottleneck_depth', 'window_size', 'num_heads', 'd_state', 'expand', 'embed_dim',
                    'film_hidden', 'scan_max_elements')
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f'CLIPHazeNet {name} must be >= 1, got {getattr(self, name)}.')
        if self.mlp_ratio <= 0:
            raise ValueError(f'CLIPHazeNet mlp_ratio must be > 0, got {self.mlp_ratio}.')
        if self.width % self.num_heads:
            raise ValueError(f'CLIPHazeNet num_heads={self.num_heads} must divide width={self.width}.')
        for name, value, allowed in (('cam', self.cam, CAM_MODES), ('paths', self.paths, PATHS),
                                     ('scan_impl', self.scan_impl, SCAN_IMPLS),
                                     ('data_range', self.data_range, DATA_RANGES)):
            if value not in allowed:
                raise ValueError(f'CLIPHazeNet {name} must be one of {allowed}, got {value!r}.')
        if self.paths != 'both' and self.cam != 'none':
            raise ValueError(f"CLIPHazeNet paths={self.paths!r} has one path, but CAM fuses two: set cam: none "
                             f"(got cam={self.cam!r}).")

    @property
    def uses_density(self):
        return self.cam in ('full', 'density_only')

    @property
    def uses_embedding(self):
        return self.cam in ('full', 'embedding_only')


class SS2D(nn.Module):
    """2-D selective scan (VMamba/MambaIR style) on channels-last features.

    in_proj to 2 * d_inner (d_inner = expand * dim); one half goes through a depthwise 3x3 conv and SiLU and is scanned
    in four directions (rows, columns, and both reversed), each with its own x_proj (-> dt, B, C) and dt_proj; the
    four outputs are mapped back to the image grid and summed, normalised, gated by SiLU of the other half and
    projected back to ``dim``. A uses the S4D-real init (A[d, n] = -(n + 1)), dt the Mamba init (softplus(bias) log-
    uniform in [1e-3, 1e-1]), D starts at 1.

    Args:
        dim (int): Channels C.
        d_state (int): State size N.
        expand (int): d_inner = expand * C.
        scan_impl (str): 'auto' | 'torch' | 'mamba_ssm'.
        scan_max_elements (int): Memory bound of the PyTorch scan.
    """
    num_directions = 4

    def __init__(self, dim, d_state=16, expand=2, scan_impl='auto', scan_max_elements=DEFAULT_MAX_ELEMENTS):
        super().__init__()
        d_inner = expand * dim
        k = self.num_directions
        self.d_inner = d_inner
        self.d_state = d_state
        self.dt_rank = math.ceil(dim / 16)
        self.scan_impl = scan_impl
        self.scan_max_elements = scan_max_elements
        self.in_proj = nn.Linear(dim, 2 * d_inner, bias=False)
        self.conv2d = nn.Conv2d(d_inner, d_inner, 3, padding=1, groups=d_inner)
        self.x_proj_weight = nn.Parameter(torch.empty(k, self.dt_rank + 2 * d_state, d_inner))
        nn.init.uniform_(self.x_proj_weight, -d_inner**-0.5, d_inner**-0.5)  # nn.Linear's default range
        dt_std = self.dt_rank**-0.5
        self.dt_projs_weight = nn.Parameter(torch.empty(k, d_inner, self.dt_rank).uniform_(-dt_std, dt_std))
        dt = torch.exp(torch.rand(k, d_inner) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3)).clamp(min=1e-4)
        self.dt_projs_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        self.A_logs = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(k, d_inner, 1))
        self.Ds = nn.Parameter(torch.ones(k, d_inner))
        self.out_norm = nn.LayerNorm(d_inner)
        self.out_proj = nn.Linear(d_inner, dim, bias=False)

    @staticmethod
    def _to_sequence(x, k):
        """(B, D, H, W) -> (B, D, H*W) in scan order k: 0 rows, 1 columns, 2 rows reversed, 3 columns reversed."""
        seq = (x if k % 2 == 0 else x.transpose(2, 3)).flatten(2)
        return seq.flip(-1) if k >= 2 else seq

    @staticmethod
    def _to_grid(y, k, h, w):
        """Inverse of :meth:`_to_sequence`: (B, D, H*W) in scan order k -> (B, D, H, W)."""
        if k >= 2:
            y = y.flip(-1)
        return y.view(y.shape[0], -1, h, w) if k % 2 == 0 else y.view(y.shape[0], -1, w, h).transpose(2, 3)

    def forward(self, x):
        """(B, H, W, C) -> (B, H, W, C)."""
        _, h, w, _ = x.shape
        xin, gate = self.in_proj(x).chunk(2, dim=-1)
        xin = F.silu(self.conv2d(xin.permute(0, 3, 1, 2).contiguous()))
        A = -torch.exp(self.A_logs.float())
        y = 0
        # one direction at a time: a quarter of the peak memory of stacking them, the same arithmetic
        for k in range(self.num_directions):
            seq = self._to_sequence(xin, k)
            dbl = torch.einsum('bdl,cd->bcl', seq, self.x_proj_weight[k])
            dts, bs, cs = torch.split(dbl, [self.dt_rank, self.d_state, self.d_state], dim=1)
            dts = torch.einsum('brl,dr->bdl', dts, self.dt_projs_weight[k])
            out = selective_scan(seq, dts, A[k], bs, cs, self.Ds[k], delta_bias=self.dt_projs_bias[k],
                                 delta_softplus=True, impl=self.scan_impl, max_elements=self.scan_max_elements)
            y = y + self._to_grid(out, k, h, w)
        y = self.out_norm(y.permute(0, 2, 3, 1))
        return self.out_proj(y * F.silu(gate))


def _window_partition(x, ws):
    """(B, H, W, C) -> (B, nW, ws*ws, C), windows in row-major order."""
    b, h, w, c = x.shape
    x = x.view(b, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, (h // ws) * (w // ws), ws * ws, c)


def _window_merge(windows, ws, h, w):
    """Inverse of :func:`_window_partition`: (B, nW, ws*ws, C) -> (B, H, W, C)."""
    b, _, _, c = windows.shape
    x = windows.view(b, h // ws, w // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h, w, c)


class WindowAttention(nn.Module):
    """Swin-style (shifted) window multi-head self-attention with a learned relative position bias.

    The map is cut into non-overlapping ``window_size`` windows; with ``shift`` the map is first rolled by -shift and
    tokens that were not neighbours before the roll are masked apart (Swin's cyclic shift). Maps no larger than one
    window are not shifted.

    Args:
        dim (int): Channels C.
        window_size (int): Window side.
        num_heads (int): Attention heads (must divide C).
        shift (int): Cyclic shift (0 or window_size // 2 in alternate blocks).
    """

    def __init__(self, dim, window_size=8, num_heads=1, shift=0):
        super().__init__()
        self.window_size = window_size
        self.num_heads = num_heads
        self.shift = shift
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1)**2, num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        coords = torch.stack(torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing='ij'))
        rel = coords.flatten(1)[:, :, None] - coords.flatten(1)[:, None, :] + window_size - 1  # (2, N, N) >= 0
        self.register_buffer('relative_position_index', rel[0] * (2 * window_size - 1) + rel[1], persistent=False)

    def relative_position_bias(self):
        """(heads, N, N) bias, N = window_size^2."""
        n = self.window_size**2
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        return bias.view(n, n, self.num_heads).permute(2, 0, 1)

    def _region_ids(self, h, w, shift, device):
        """(nW, N) label of each token's region before the cyclic shift (Swin's img_mask)."""
        ws = self.window_size
        ids = torch.zeros(1, h, w, 1, device=device)
        label = 0
        for hs in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
            for wsl in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
                ids[:, hs, wsl] = label
                label += 1
        return _window_partition(ids, ws)[0, :, :, 0]

    def forward(self, x):
        """(B, H, W, C) with H, W multiples of window_size -> (B, H, W, C)."""
        b, h, w, c = x.shape
        ws = self.window_size
        shift = self.shift if min(h, w) > ws else 0
        if shift:
            x = torch.roll(x, (-shift, -shift), dims=(1, 2))
        windows = _window_partition(x, ws)  # (B, nW, N, C)
        num_windows, n = windows.shape[1], ws * ws
        bias = self.relative_position_bias().to(x.dtype)
        ids = self._region_ids(h, w, shift, x.device) if shift else None
        head_dim = c // self.num_heads
        group = max(1, _ATTN_MAX_ELEMENTS // (b * self.num_heads * n * n))
        out = []
        for s in range(0, num_windows, group):
            qkv = self.qkv(windows[:, s:s + group]).unflatten(-1, (3, self.num_heads, head_dim))
            q, k, v = qkv.permute(3, 0, 1, 4, 2, 5)  # each (B, g, heads, N, head_dim)
            mask = bias
            if ids is not None:
                blocked = ids[s:s + group, :, None] != ids[s:s + group, None, :]  # (g, N, N)
                mask = bias.masked_fill(blocked[:, None], float('-inf'))  # (g, heads, N, N)
            attn = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            out.append(self.proj(attn.transpose(-3, -2).flatten(-2)))
        x = _window_merge(torch.cat(out, dim=1), ws, h, w)
        return torch.roll(x, (shift, shift), dims=(1, 2)) if shift else x


class CAM(nn.Module):
    """CLIP-instructed Aggregation Module: per-pixel weight w, output w * F_ssm + (1 - w) * F_attn.

    w = sigmoid(1x1(GELU(dw3x3(FiLM(1x1([F_ssm, F_attn, density])))))); the density map (explicit guidance) is an
    extra input channel, the image embedding (implicit guidance) gives the FiLM scale and shift through a small MLP.
    The last layers of the weight branch and of the MLP start at zero, so a new CAM averages the paths.

    Args:
        dim (int): Channels C of both paths.
        embed_dim (int): Length E of the image embedding.
        use_density (bool): Take the density map.
        use_embedding (bool): Take the embedding (FiLM).
        film_hidden (int): Hidden size of the FiLM MLP.
    """

    def __init__(self, dim, embed_dim=512, use_density=True, use_embedding=True, film_hidden=64):
        super().__init__()
        self.use_density = use_density
        self.use_embedding = use_embedding
        self.reduce = nn.Conv2d(2 * dim + int(use_density), dim, 1)
        if use_embedding:
            self.film = nn.Sequential(nn.Linear(embed_dim, film_hidden), nn.GELU(), nn.Linear(film_hidden, 2 * dim))
            nn.init.zeros_(self.film[-1].weight)
            nn.init.zeros_(self.film[-1].bias)
        self.dwconv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.to_weight = nn.Conv2d(dim, 1, 1)
        nn.init.zeros_(self.to_weight.weight)
        nn.init.zeros_(self.to_weight.bias)

    def forward(self, f_ssm, f_attn, density=None, embedding=None):
        """
        Args:
            f_ssm, f_attn (Tensor): (B, H, W, C) path outputs.
            density (Tensor | None): (B, 1, H, W) at this stage's resolution (when ``use_density``).
            embedding (Tensor | None): (B, E) (when ``use_embedding``).

        Returns:
            Tensor: (B, H, W, C).
        """
        feats = [f_ssm.permute(0, 3, 1, 2), f_attn.permute(0, 3, 1, 2)]
        if self.use_density:
            feats.append(density.to(f_ssm.dtype))
        hid = self.reduce(torch.cat(feats, dim=1))
        if self.use_embedding:
            scale, shift = self.film(embedding.to(hid.dtype))[:, :, None, None].chunk(2, dim=1)
            hid = hid * (1 + scale) + shift
        w = torch.sigmoid(self.to_weight(F.gelu(self.dwconv(hid)))).permute(0, 2, 3, 1)  # (B, H, W, 1)
        return f_attn + w * (f_ssm - f_attn)


class HybridBlock(nn.Module):
    """x -> LN -> {SS2D, window attention} -> CAM (or sum, or one path) -> +x -> LN -> FFN -> +x, channels-last.

    Args:
        dim (int): Channels C.
        cfg (CLIPHazeConfig): Options.
        shift (int): Window shift of the attention path.
    """

    def __init__(self, dim, cfg, shift=0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.ssm = None
        self.attn = None
        self.cam = None
        if cfg.paths in ('ssm', 'both'):
            self.ssm = SS2D(dim, cfg.d_state, cfg.expand, cfg.scan_impl, cfg.scan_max_elements)
        if cfg.paths in ('attention', 'both'):
            self.attn = WindowAttention(dim, cfg.window_size, cfg.num_heads, shift)
        if cfg.paths == 'both' and cfg.cam != 'none':
            self.cam = CAM(dim, cfg.embed_dim, cfg.uses_density, cfg.uses_embedding, cfg.film_hidden)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * cfg.mlp_ratio)
        self.ffn = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x, density=None, embedding=None):
        """x (B, H, W, C); density (B, 1, H, W) or None; embedding (B, E) or None -> (B, H, W, C)."""
        y = self.norm1(x)
        if self.ssm is None:
            mixed = self.attn(y)
        elif self.attn is None:
            mixed = self.ssm(y)
        elif self.cam is None:
            mixed = self.ssm(y) + self.attn(y)
        else:
            mixed = self.cam(self.ssm(y), self.attn(y), density, embedding)
        x = x + mixed
        return x + self.ffn(self.norm2(x))


class HybridStage(nn.Module):
    """``depth`` hybrid blocks at one resolution; window shift in every second block (Swin)."""

    def __init__(self, dim, depth, cfg):
        super().__init__()
        self.blocks = nn.ModuleList(
            [HybridBlock(dim, cfg, shift=0 if i % 2 == 0 else cfg.window_size // 2) for i in range(depth)])

    def forward(self, x, density=None, embedding=None):
        """(B, C, H, W) -> (B, C, H, W); the blocks run channels-last."""
        x = x.permute(0, 2, 3, 1)
        for blk in self.blocks:
            x = blk(x, density, embedding)
        return x.permute(0, 3, 1, 2).contiguous()


@ARCH_REGISTRY.register()
class CLIPHazeNet(nn.Module):
    """CLIPHaze-style dehazer: U-Net of hybrid selective-scan / window-attention blocks fused by CAM.

    Stem 3x3 conv -> 3 encoder levels (widths C, 2C, 4C; stride-2 3x3 conv down) -> bottleneck (8C) -> 3 decoder
    levels (1x1 conv + PixelShuffle up, skip concat + 1x1 conv) -> 3x3 conv head, plus the input (global residual).
    Inputs are reflect-padded to a multiple of window_size * 2^3 and the output is cropped back.

    Args:
        variant (str | None): Preset T/S/B: width 24/32/48 (depths are the same). Ignored when ``width`` is given.
        width (int | None): C, the width of level 1.
        depths (list[int]): Blocks of encoder levels 1..3 (default [2, 2, 4]).
        bottleneck_depth (int): Blocks at the bottleneck (4).
        decoder_depths (list[int] | None): Blocks of decoder levels 1..3; default: as ``depths``.
        window_size (int): Attention window (8).
        num_heads (int): Attention heads at every level (1, as the paper describes).
        mlp_ratio (float): FFN hidden size / C (2).
        d_state (int): Selective-scan state size N (16).
        expand (int): SS2D expansion (2).
        cam (str): 'full' (density + embedding), 'density_only', 'embedding_only' or 'none' (plain sum).
        paths (str): 'both', or 'ssm' / 'attention' alone (ablations; need ``cam: none``).
        embed_dim (int): Length E of the image embedding (512 for ViT-B/32).
        film_hidden (int): Hidden size of each CAM's FiLM MLP (64).
        scan_impl (str): 'auto' (mamba_ssm kernel on CUDA when installed), 'torch' or 'mamba_ssm'.
        scan_max_elements (int): Memory bound of the PyTorch scan, in states held at once.
        data_range (str): 'unit' ([0, 1], default) or 'signed' ([-1, 1]) for input and output.

    Shapes:
        forward(x, density=None, embedding=None): x (B, 3, H, W), any H, W; density (B, 1, h, w) in [0, 1], any
        resolution (resized to every stage), needed for cam full/density_only; embedding (B, E), needed for cam
        full/embedding_only -> (B, 3, H, W).
    """

    def __init__(self,
                 variant='S',
                 width=None,
                 depths=(2, 2, 4),
                 bottleneck_depth=4,
                 decoder_depths=None,
                 window_size=8,
                 num_heads=1,
                 mlp_ratio=2.0,
                 d_state=16,
                 expand=2,
                 cam='full',
                 paths='both',
                 embed_dim=512,
                 film_hidden=64,
                 scan_impl='auto',
                 scan_max_elements=DEFAULT_MAX_ELEMENTS,
                 data_range='unit'):
        super().__init__()
        if width is None:
            key = str(variant).upper()
            if key not in CLIPHAZE_WIDTHS:
                raise ValueError(f'Unknown CLIPHazeNet variant {variant!r}; expected one of {list(CLIPHAZE_WIDTHS)} '
                                 'or an explicit width.')
            width = CLIPHAZE_WIDTHS[key]
        depths = tuple(int(d) for d in depths)
        decoder_depths = depths if decoder_depths is None else tuple(int(d) for d in decoder_depths)
        cfg = CLIPHazeConfig(int(width), depths, int(bottleneck_depth), decoder_depths, int(window_size),
                             int(num_heads), float(mlp_ratio), int(d_state), int(expand), str(cam), str(paths),
                             int(embed_dim), int(film_hidden), str(scan_impl), int(scan_max_elements),
                             str(data_range))
        if cfg.scan_impl == 'mamba_ssm':
            resolve_scan_impl('mamba_ssm', 'cuda')  # fail at build time, not at the first forward, when not installed
        self.cfg = cfg
        self.data_range = cfg.data_range
        self.pad_multiple = cfg.window_size * 2**NUM_LEVELS
        # tiled inference keeps tiles on the window grid of levels 1-2 (mixcl_arch.utils.tiling.net_tile_align): tiles
        # then match the whole image far better than at any offset; the full pad_multiple would let the CLI's default
        # 32 px overlap shrink to nothing
        self.tile_align = 2 * cfg.window_size
        dims = [cfg.width * 2**i for i in range(NUM_LEVELS + 1)]
        self.stem = nn.Conv2d(3, dims[0], 3, padding=1)
        self.encoders = nn.ModuleList([HybridStage(dims[i], cfg.depths[i], cfg) for i in range(NUM_LEVELS)])
        self.downs = nn.ModuleList([nn.Conv2d(dims[i], dims[i + 1], 3, stride=2, padding=1) for i in range(NUM_LEVELS)])
        self.bottleneck = HybridStage(dims[-1], cfg.bottleneck_depth, cfg)
        self.ups = nn.ModuleList([
            nn.Sequential(nn.Conv2d(dims[i + 1], dims[i] * 4, 1), nn.PixelShuffle(2)) for i in range(NUM_LEVELS)
        ])
        self.skip_fusions = nn.ModuleList([nn.Conv2d(2 * dims[i], dims[i], 1) for i in range(NUM_LEVELS)])
        self.decoders = nn.ModuleList([HybridStage(dims[i], cfg.decoder_depths[i], cfg) for i in range(NUM_LEVELS)])
        self.head = nn.Conv2d(dims[0], 3, 3, padding=1)

    @property
    def needs_density(self):
        """Whether forward() needs the density map."""
        return self.cfg.paths == 'both' and self.cfg.uses_density

    @property
    def needs_embedding(self):
        """Whether forward() needs the image embedding."""
        return self.cfg.paths == 'both' and self.cfg.uses_embedding

    def _check_inputs(self, x, density, embedding):
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f'CLIPHazeNet expects an image of shape (B, 3, H, W), got {tuple(x.shape)}.')
        batch = x.shape[0]
        if self.needs_density and (density is None or density.dim() != 4 or density.shape[:2] != (batch, 1)):
            got = None if density is None else tuple(density.shape)
            raise ValueError(f'CLIPHazeNet with cam={self.cfg.cam!r} needs a density map of shape ({batch}, 1, h, w) '
                             f'(any h, w); got {got}. Use cam: none or embedding_only to run without it.')
        if self.needs_embedding and (embedding is None or tuple(embedding.shape) != (batch, self.cfg.embed_dim)):
            got = None if embedding is None else tuple(embedding.shape)
            raise ValueError(f'CLIPHazeNet with cam={self.cfg.cam!r} needs an image embedding of shape ({batch}, '
                             f'embed_dim={self.cfg.embed_dim}); got {got}. Use cam: none or density_only to run '
                             'without it.')

    def _pad(self, x, pad_h, pad_w):
        # reflect needs the pad to be smaller than the size; tiny inputs fall back to replicate
        mode = 'reflect' if pad_h < x.shape[2] and pad_w < x.shape[3] else 'replicate'
        return F.pad(x, (0, pad_w, 0, pad_h), mode) if pad_h or pad_w else x

    def _stage_densities(self, density, h, w, pad_h, pad_w):
        """The density map on the image grid, padded like the image, then resized to each level: list of 4."""
        if not self.needs_density:
            return [None] * (NUM_LEVELS + 1)
        d = F.interpolate(density.float(), size=(h, w), mode='bilinear', align_corners=False, antialias=True)
        d = self._pad(d, pad_h, pad_w)
        out = [d]
        for _ in range(NUM_LEVELS):
            d = F.avg_pool2d(d, 2)  # exact 2x2 mean: the padded size is a multiple of 2^levels
            out.append(d)
        return out

    def forward(self, x, density=None, embedding=None):
        self._check_inputs(x, density, embedding)
        emb = embedding if self.needs_embedding else None
        h, w = x.shape[2:]
        pad_h, pad_w = (-h) % self.pad_multiple, (-w) % self.pad_multiple
        x = self._pad(x * 2 - 1 if self.data_range == 'unit' else x, pad_h, pad_w)
        dens = self._stage_densities(density, h, w, pad_h, pad_w)
        feat = self.stem(x)
        skips = []
        for i in range(NUM_LEVELS):
            feat = self.encoders[i](feat, dens[i], emb)
            skips.append(feat)
            feat = self.downs[i](feat)
        feat = self.bottleneck(feat, dens[-1], emb)
        for i in reversed(range(NUM_LEVELS)):
            feat = self.skip_fusions[i](torch.cat([self.ups[i](feat), skips[i]], dim=1))
            feat = self.decoders[i](feat, dens[i], emb)
        out = (x + self.head(feat))[:, :, :h, :w]
        return (out + 1) * 0.5 if self.data_range == 'unit' else out
