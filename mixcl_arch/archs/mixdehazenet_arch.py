"""MixDehazeNet (arXiv 2305.17654) and MixCLDehazeNet (MixDehazeNet + a CLIP text prior).

Module and parameter names follow the original implementations exactly, so their checkpoints load with
``strict=True`` (``patch_embed.proj.weight``, ``layer1.blocks.0.conv3_19.weight``, ``text_emb.q1.weight`` ...).

The reference text fusion (``ParametricAttention2``) materialises an (H*W) x 512 attention matrix. Because its keys
and values are affine functions of a scalar per text position, the attention collapses exactly to a per-pixel
"tilted mean" of the 512 text values (see :class:`CLIPTextFusion`); :func:`tilted_mean` computes it in bounded
memory with an exact custom backward, which is what makes 1024x1024 and 4K inference possible.
"""
import math

import torch
from basicsr.utils.registry import ARCH_REGISTRY
from torch import nn as nn
from torch.nn import functional as F

from mixcl_arch.archs.arch_util import crop_top_left, pad_reflect_or_replicate
from mixcl_arch.archs.text_fusion import CALIPFusion, LinearParametricFusion, TextEmbFusion, resolve_fusion

MIXDEHAZENET_PRESETS = {
    'T': [1, 1, 2, 1, 1],
    'S': [2, 2, 4, 2, 2],
    'B': [4, 4, 8, 4, 4],
    'L': [8, 8, 16, 8, 8],
}
DEFAULT_EMBED_DIMS = [24, 48, 96, 48, 24]
DATA_RANGES = ('signed', 'unit')
MIN_INPUT_SIZE = 40
# text positions per step of the exported fusion (memory (B, H*W, chunk) floats per temporary)
EXPORT_TEXT_CHUNK = 64


def resolve_preset(variant, embed_dims, depths):
    """Return (embed_dims, depths) from a preset name and/or explicit lists.

    Args:
        variant (str | None): One of T/S/B/L (case-insensitive), or None when ``depths`` is given.
        embed_dims (list[int] | None): Five stage widths; default [24, 48, 96, 48, 24].
        depths (list[int] | None): Five stage depths; overrides the preset's depths when given.
    """
    if depths is None:
        if variant is None:
            raise ValueError('MixDehazeNet needs either `variant` (one of T/S/B/L) or explicit `depths` (5 ints).')
        key = str(variant).upper()
        if key not in MIXDEHAZENET_PRESETS:
            raise ValueError(f'Unknown MixDehazeNet variant {variant!r}; expected one of {list(MIXDEHAZENET_PRESETS)}.')
        depths = MIXDEHAZENET_PRESETS[key]
    embed_dims = list(DEFAULT_EMBED_DIMS if embed_dims is None else embed_dims)
    depths = list(depths)
    if len(embed_dims) != 5 or len(depths) != 5:
        raise ValueError(f'embed_dims and depths need 5 entries each, got {embed_dims} and {depths}.')
    if embed_dims[1] != embed_dims[3] or embed_dims[0] != embed_dims[4]:
        raise ValueError(f'U-shape needs embed_dims[1] == embed_dims[3] and embed_dims[0] == embed_dims[4], '
                         f'got {embed_dims}.')
    if min(embed_dims) < 8:
        raise ValueError(f'embed_dims must be >= 8 (pixel attention uses dim // 8 channels), got {embed_dims}.')
    return embed_dims, depths


class MixStructureBlock(nn.Module):
    """Mix Structure Block: multi-scale parallel large-kernel convs, then parallel pixel/channel attention.

    Args:
        dim (int): Channels C. Input and output are (B, C, H, W).
    """

    def __init__(self, dim):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(dim)
        self.norm2 = nn.BatchNorm2d(dim)

        self.conv1 = nn.Conv2d(dim, dim, kernel_size=1)
        self.conv2 = nn.Conv2d(dim, dim, kernel_size=5, padding=2, padding_mode='reflect')
        self.conv3_19 = nn.Conv2d(dim, dim, kernel_size=7, padding=9, groups=dim, dilation=3, padding_mode='reflect')
        self.conv3_13 = nn.Conv2d(dim, dim, kernel_size=5, padding=6, groups=dim, dilation=3, padding_mode='reflect')
        self.conv3_7 = nn.Conv2d(dim, dim, kernel_size=3, padding=3, groups=dim, dilation=3, padding_mode='reflect')

        # simple pixel attention Wv * Wg
        self.Wv = nn.Sequential(
            nn.Conv2d(dim, dim, 1), nn.Conv2d(dim, dim, kernel_size=3, padding=1, groups=dim, padding_mode='reflect'))
        self.Wg = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(dim, dim, 1), nn.Sigmoid())
        # channel attention
        self.ca = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(dim, dim, 1), nn.GELU(), nn.Conv2d(dim, dim, 1), nn.Sigmoid())
        # pixel attention
        self.pa = nn.Sequential(nn.Conv2d(dim, dim // 8, 1), nn.GELU(), nn.Conv2d(dim // 8, 1, 1), nn.Sigmoid())

        self.mlp = nn.Sequential(nn.Conv2d(dim * 3, dim * 4, 1), nn.GELU(), nn.Conv2d(dim * 4, dim, 1))
        self.mlp2 = nn.Sequential(nn.Conv2d(dim * 3, dim * 4, 1), nn.GELU(), nn.Conv2d(dim * 4, dim, 1))
        self.conv3_fused = None  # set by fuse_for_inference()

    @torch.no_grad()
    def fuse_for_inference(self, merge_branches=False):
        """Fold norm1 into conv1 and, optionally, merge the three dilated depthwise branches into one conv.

        conv1(BN(x)) = W (s x + h) + b with s = gamma / sqrt(var + eps), h = beta - mean * s. The 5x5 and 3x3
        dilation-3 kernels are zero-embedded in 7x7 ones (the same taps, so reflect padding 9 gives identical values),
        giving one depthwise conv with 3 outputs per channel; mlp[0]'s input channels are permuted to match.
        norm2 stays: its output also multiplies the attention maps, so it cannot be folded away.
        """
        if isinstance(self.norm1, nn.Identity):
            return self
        dim = self.conv1.in_channels
        bn = self.norm1
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        shift = bn.bias - bn.running_mean * scale
        w = self.conv1.weight[:, :, 0, 0]
        self.conv1.bias.copy_(self.conv1.bias + w @ shift)
        self.conv1.weight.copy_((w * scale[None, :])[:, :, None, None])
        self.norm1 = nn.Identity()
        if not merge_branches:
            return self

        fused = nn.Conv2d(dim, dim * 3, 7, padding=9, dilation=3, groups=dim, padding_mode='reflect')
        fused = fused.to(self.conv1.weight)
        kernel = torch.zeros(dim, 3, 7, 7).to(self.conv1.weight)
        kernel[:, 0] = self.conv3_19.weight[:, 0]
        kernel[:, 1, 1:6, 1:6] = self.conv3_13.weight[:, 0]
        kernel[:, 2, 2:5, 2:5] = self.conv3_7.weight[:, 0]
        fused.weight.copy_(kernel.view(dim * 3, 1, 7, 7))
        fused.bias.copy_(torch.stack([self.conv3_19.bias, self.conv3_13.bias, self.conv3_7.bias], dim=1).view(-1))
        # fused output channel 3c + k corresponds to the original concat channel k * dim + c
        order = torch.arange(dim * 3, device=kernel.device).view(3, dim).t().reshape(-1)
        self.mlp[0].weight.copy_(self.mlp[0].weight[:, order])
        self.conv3_fused = fused
        del self.conv3_19, self.conv3_13, self.conv3_7
        return self

    def forward(self, x):
        identity = x
        x = self.conv2(self.conv1(self.norm1(x)))
        if self.conv3_fused is not None:
            x = self.conv3_fused(x)
        else:
            x = torch.cat([self.conv3_19(x), self.conv3_13(x), self.conv3_7(x)], dim=1)
        x = identity + self.mlp(x)

        identity = x
        x = self.norm2(x)
        x = torch.cat([self.Wv(x) * self.Wg(x), self.ca(x) * x, self.pa(x) * x], dim=1)
        return identity + self.mlp2(x)


class MixBasicLayer(nn.Module):
    """A stage of ``depth`` Mix Structure Blocks at constant width ``dim``."""

    def __init__(self, dim, depth):
        super().__init__()
        self.dim = dim
        self.depth = depth
        self.blocks = nn.ModuleList([MixStructureBlock(dim) for _ in range(depth)])

    def forward(self, x):
        for blk in self.blocks:
            x = blk(x)
        return x


class MixPatchEmbed(nn.Module):
    """Strided conv (reflect padding): (B, in_chans, H, W) -> (B, embed_dim, H/patch, W/patch)."""

    def __init__(self, patch_size=4, in_chans=3, embed_dim=96, kernel_size=None):
        super().__init__()
        self.in_chans = in_chans
        self.embed_dim = embed_dim
        kernel_size = patch_size if kernel_size is None else kernel_size
        self.proj = nn.Conv2d(
            in_chans,
            embed_dim,
            kernel_size=kernel_size,
            stride=patch_size,
            padding=(kernel_size - patch_size + 1) // 2,
            padding_mode='reflect')

    def forward(self, x):
        return self.proj(x)


class MixPatchUnEmbed(nn.Module):
    """Conv + PixelShuffle: (B, embed_dim, H, W) -> (B, out_chans, H*patch, W*patch)."""

    def __init__(self, patch_size=4, out_chans=3, embed_dim=96, kernel_size=None):
        super().__init__()
        self.out_chans = out_chans
        self.embed_dim = embed_dim
        kernel_size = 1 if kernel_size is None else kernel_size
        self.proj = nn.Sequential(
            nn.Conv2d(
                embed_dim,
                out_chans * patch_size**2,
                kernel_size=kernel_size,
                padding=kernel_size // 2,
                padding_mode='reflect'), nn.PixelShuffle(patch_size))

    def forward(self, x):
        return self.proj(x)


class SKFusion(nn.Module):
    """Selective-kernel fusion of ``height`` feature maps of shape (B, C, H, W) into one."""

    def __init__(self, dim, height=2, reduction=8):
        super().__init__()
        self.height = height
        d = max(int(dim / reduction), 4)
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.mlp = nn.Sequential(nn.Conv2d(dim, d, 1, bias=False), nn.ReLU(), nn.Conv2d(d, dim * height, 1, bias=False))
        self.softmax = nn.Softmax(dim=1)

    def forward(self, in_feats):
        b, c, h, w = in_feats[0].shape
        in_feats = torch.cat(in_feats, dim=1).view(b, self.height, c, h, w)
        attn = self.mlp(self.avg_pool(torch.sum(in_feats, dim=1)))
        attn = self.softmax(attn.view(b, self.height, c, 1, 1))
        return torch.sum(in_feats * attn, dim=1)


class _TiltedMean(torch.autograd.Function):
    """E_p = sum_j softmax_j(alpha_p * t_j) * t_j, computed in pixel chunks; exact gradients.

    d E_p / d alpha_p = Var_p(t) and d E_p / d t_j = q_pj * (1 + alpha_p * (t_j - E_p)) with q_p = softmax(alpha_p t).
    Only alpha (B, N), t (B, L), E and Var (B, N) are kept for backward, never an (N x L) matrix.
    """

    @staticmethod
    def forward(ctx, alpha, t, chunk):
        b, n = alpha.shape
        tt = torch.stack([t, t * t], dim=-1)  # (B, L, 2)
        mean = alpha.new_empty(b, n)
        var = alpha.new_empty(b, n)
        for s in range(0, n, chunk):
            a = alpha[:, s:s + chunk, None]
            q = torch.softmax(a * t[:, None, :], dim=-1)  # (B, c, L)
            m = torch.bmm(q, tt)  # (B, c, 2)
            mean[:, s:s + chunk] = m[..., 0]
            var[:, s:s + chunk] = (m[..., 1] - m[..., 0]**2).clamp_min_(0)
        ctx.chunk = chunk
        ctx.save_for_backward(alpha, t, mean, var)
        return mean

    @staticmethod
    def backward(ctx, grad_mean):
        alpha, t, mean, var = ctx.saved_tensors
        grad_alpha = grad_t = None
        if ctx.needs_input_grad[0]:
            grad_alpha = grad_mean * var
        if ctx.needs_input_grad[1]:
            grad_t = torch.zeros_like(t)
            for s in range(0, alpha.shape[1], ctx.chunk):
                a = alpha[:, s:s + ctx.chunk, None]
                q = torch.softmax(a * t[:, None, :], dim=-1)
                w = q * (1 + a * (t[:, None, :] - mean[:, s:s + ctx.chunk, None]))  # (B, c, L)
                grad_t += torch.bmm(grad_mean[:, None, s:s + ctx.chunk], w)[:, 0]
        return grad_alpha, grad_t, None


def tilted_mean(alpha, t, max_elements=2**24):
    """Per-pixel softmax-weighted mean of the text values, without an (N x L) attention matrix.

    Args:
        alpha (Tensor): (B, N) per-pixel inverse temperatures.
        t (Tensor): (B, L) text feature values (the attention positions).
        max_elements (int): Upper bound on B * chunk * L elements materialised at once.

    Returns:
        Tensor: (B, N) float32, ``sum_j softmax_j(alpha * t)_j * t_j``.
    """
    device_type = alpha.device.type
    with torch.autocast(device_type=device_type, enabled=False):
        alpha = alpha.float()
        t = t.float()
        if torch.compiler.is_exporting():
            return _tilted_mean_text_chunks(alpha, t)
        chunk = max(1, max_elements // max(1, alpha.shape[0] * t.shape[1]))
        return _TiltedMean.apply(alpha, t, chunk)


def _tilted_mean_text_chunks(alpha, t, chunk=EXPORT_TEXT_CHUNK):
    """:func:`tilted_mean` for ``torch.export`` / ONNX, where N = H * W is symbolic (no pixel loop, no autograd).

    The softmax sums are accumulated over chunks of the static text positions instead of chunks of pixels, so the
    graph is a fixed unrolled sequence and holds (B, N, ``chunk``) temporaries instead of (B, N, L). The softmax
    shift max_j(alpha * t_j) is alpha * max(t) or alpha * min(t), whichever is larger, so no (N x L) max is needed.

    Args:
        alpha (Tensor): (B, N) float32.
        t (Tensor): (B, L) float32.
        chunk (int): Text positions per step.

    Returns:
        Tensor: (B, N), equal to :func:`tilted_mean` up to float rounding.
    """
    a = alpha[:, :, None]  # (B, N, 1)
    shift = torch.maximum(a * t.amax(1)[:, None, None], a * t.amin(1)[:, None, None])
    num = den = None
    for s in range(0, t.shape[1], chunk):
        tc = t[:, None, s:s + chunk]  # (B, 1, c)
        e = torch.exp(a * tc - shift)  # (B, N, c), entries in (0, 1]
        n, d = torch.bmm(e, tc.transpose(1, 2)), e.sum(-1, keepdim=True)
        num, den = (n, d) if num is None else (num + n, den + d)
    return (num / den)[:, :, 0]


class CLIPTextFusion(nn.Module):
    """CALIP-style parametric attention of an image with one CLIP text feature (the reference's text_emb).

    Queries are 1x1 projections of the image (``proj_dim`` channels per pixel); keys and values are 1x1 projections
    of the ``text_dim`` scalar positions of the text feature; attention runs over those positions and a 1x1
    post-projection gives ``out_chans`` channels. Because k_j = w_k * t_j + b_k and v_j = w_v * t_j + b_v, the
    attention equals ``a * E(alpha) + c`` with alpha = (q . w_k) / sqrt(proj_dim) and E the tilted mean of t, so no
    (H*W) x text_dim matrix is needed. ``k1``, ``v1``, ``q2`` and ``postProj_t`` only fed the reference's text-update
    branch, whose result the backbone never uses; they are kept (114 parameters in all) so official weights load,
    and frozen (as is ``k2.bias``, which cancels in the softmax) so that DDP and optimizers ignore them.

    Args:
        in_chans (int): Image channels (3).
        out_chans (int): Fused channels produced (3).
        proj_dim (int): Query/key/value size (5).
        text_dim (int): Text feature length, i.e. number of attention positions (512).
        max_elements (int): Memory bound for :func:`tilted_mean`.
    """

    def __init__(self, in_chans=3, out_chans=3, proj_dim=5, text_dim=512, max_elements=2**24):
        super().__init__()
        self.q1 = nn.Conv2d(in_chans, proj_dim, 1)
        self.k1 = nn.Conv2d(in_chans, proj_dim, 1)
        self.v1 = nn.Conv2d(in_chans, proj_dim, 1)
        self.q2 = nn.Conv1d(1, proj_dim, 1)
        self.k2 = nn.Conv1d(1, proj_dim, 1)
        self.v2 = nn.Conv1d(1, proj_dim, 1)
        self.postProj_s = nn.Conv2d(proj_dim, out_chans, 1)
        self.postProj_t = nn.Conv1d(proj_dim, 1, 1)
        self.proj_dim = proj_dim
        self.text_dim = text_dim
        self.max_elements = max_elements
        # never reach the output (text-update branch; b_k cancels in the softmax): frozen, so that optimizers skip
        # them and DDP does not wait for gradients that never come. They stay in the state dict for strict loading.
        for module in (self.k1, self.v1, self.q2, self.postProj_t):
            module.requires_grad_(False)
        self.k2.bias.requires_grad_(False)

    def forward(self, x, text):
        """
        Args:
            x (Tensor): (B, in_chans, H, W) image.
            text (Tensor): (B, text_dim) text feature.

        Returns:
            Tensor: (B, out_chans, H, W) fused channels (the caller concatenates them with ``x``).
        """
        b, _, h, w = x.shape
        scale = 1.0 / math.sqrt(self.proj_dim)
        wk = self.k2.weight.view(-1)  # (P,)
        # alpha = (q1(x) . w_k) / sqrt(P): a single 1x1 conv; the b_k term is constant over j and cancels in softmax
        w_alpha = (wk @ self.q1.weight.view(self.proj_dim, -1)).view(1, -1, 1, 1) * scale
        b_alpha = (wk @ self.q1.bias).view(1) * scale
        alpha = F.conv2d(x, w_alpha, b_alpha).view(b, h * w)
        mean = tilted_mean(alpha, text, self.max_elements).view(b, 1, h, w).to(x.dtype)
        # postProj_s(w_v * E + b_v) = a * E + c
        w_post = self.postProj_s.weight.view(self.postProj_s.out_channels, self.proj_dim)
        a = (w_post @ self.v2.weight.view(-1)).view(1, -1, 1, 1)
        c = (w_post @ self.v2.bias + self.postProj_s.bias).view(1, -1, 1, 1)
        return mean * a.to(x.dtype) + c.to(x.dtype)


class _MixDehazeBackbone(nn.Module):
    """The 5-stage U-shaped MixDehazeNet body with SK-fusion skips and the K*x - B + x reconstruction."""

    def _build_backbone(self, in_chans, out_chans, embed_dims, depths):
        self.patch_size = 4
        self.embed_dims = embed_dims
        self.depths = depths
        self.patch_embed = MixPatchEmbed(patch_size=1, in_chans=in_chans, embed_dim=embed_dims[0], kernel_size=3)
        self.layer1 = MixBasicLayer(embed_dims[0], depths[0])
        self.patch_merge1 = MixPatchEmbed(patch_size=2, in_chans=embed_dims[0], embed_dim=embed_dims[1], kernel_size=3)
        self.skip1 = nn.Conv2d(embed_dims[0], embed_dims[0], 1)
        self.layer2 = MixBasicLayer(embed_dims[1], depths[1])
        self.patch_merge2 = MixPatchEmbed(patch_size=2, in_chans=embed_dims[1], embed_dim=embed_dims[2], kernel_size=3)
        self.skip2 = nn.Conv2d(embed_dims[1], embed_dims[1], 1)
        self.layer3 = MixBasicLayer(embed_dims[2], depths[2])
        self.patch_split1 = MixPatchUnEmbed(patch_size=2, out_chans=embed_dims[3], embed_dim=embed_dims[2])
        self.fusion1 = SKFusion(embed_dims[3])
        self.layer4 = MixBasicLayer(embed_dims[3], depths[3])
        self.patch_split2 = MixPatchUnEmbed(patch_size=2, out_chans=embed_dims[4], embed_dim=embed_dims[3])
        self.fusion2 = SKFusion(embed_dims[4])
        self.layer5 = MixBasicLayer(embed_dims[4], depths[4])
        self.patch_unembed = MixPatchUnEmbed(patch_size=1, out_chans=out_chans, embed_dim=embed_dims[4], kernel_size=3)

    def check_image_size(self, x):
        """Reflect-pad (bottom/right) to a multiple of 4, as the reference does, and to at least 40 px.

        The 1/4-scale stage uses reflect padding of 9, which needs 10 px there; the reference fails below 40 px,
        so only inputs it cannot process get the extra padding (replicate where reflect is impossible).
        """
        h, w = x.shape[2:]
        p = self.patch_size
        # padded size p * max(ceil(h / p), 40 / p) (40 is a multiple of 4); sym_max and the gather keep it symbolic
        # (and provably a multiple of 4) under torch.export, where max() and a branch would pin the size
        pad_h = p * torch.sym_max((h + p - 1) // p, MIN_INPUT_SIZE // p) - h
        pad_w = p * torch.sym_max((w + p - 1) // p, MIN_INPUT_SIZE // p) - w
        return pad_reflect_or_replicate(x, 0, pad_w, 0, pad_h)

    def _check_input(self, x, channels):
        if x.dim() != 4 or x.shape[1] != channels:
            raise ValueError(f'{type(self).__name__} expects an image of shape (B, {channels}, H, W), '
                             f'got {tuple(x.shape)}.')

    def fuse_for_inference(self, merge_branches=False):
        """Fold BatchNorm (and optionally merge depthwise branches) in every block; eval only, keys change.

        Args:
            merge_branches (bool): Also merge the 7/5/3 dilated depthwise convs into one 7x7 conv with 3 outputs
                per channel. Fewer kernel launches but 1.8x the depthwise MACs; measured 2x slower on CPU.
        """
        if self.training:
            raise RuntimeError('fuse_for_inference() folds BatchNorm running statistics: call .eval() first.')
        for m in self.modules():
            if isinstance(m, MixStructureBlock):
                m.fuse_for_inference(merge_branches)
        self.fused = True
        return self

    def forward_body(self, x, embed_offset=None):
        """(B, C_in, H, W) with H, W multiples of 4 -> (B, 4, H, W): the K and B maps.

        ``embed_offset`` (B, embed_dims[0], H, W), when given, is added to the patch embedding (``fusion: textemb``).
        """
        x = self.patch_embed(x)
        if embed_offset is not None:
            x = x + embed_offset
        x = self.layer1(x)
        skip1 = x
        x = self.layer2(self.patch_merge1(x))
        skip2 = x
        x = self.patch_split1(self.layer3(self.patch_merge2(x)))
        x = self.fusion1([x, self.skip2(skip2)]) + x
        x = self.patch_split2(self.layer4(x))
        x = self.fusion2([x, self.skip1(skip1)]) + x
        return self.patch_unembed(self.layer5(x))

    def _reconstruct(self, feat, x, h, w):
        k, b = torch.split(feat, (1, 3), dim=1)
        return crop_top_left(k * x - b + x, h, w)

    def _to_signed(self, x):
        return x * 2 - 1 if self.data_range == 'unit' else x

    def _from_signed(self, x):
        return (x + 1) * 0.5 if self.data_range == 'unit' else x


def _check_data_range(data_range):
    if data_range not in DATA_RANGES:
        raise ValueError(f'data_range must be one of {DATA_RANGES} ("signed": [-1, 1] like the reference code, '
                         f'"unit": [0, 1] converted inside), got {data_range!r}.')


@ARCH_REGISTRY.register()
class MixDehazeNet(_MixDehazeBackbone):
    """MixDehazeNet (Lu et al., arXiv 2305.17654).

    Args:
        variant (str): Preset T/S/B/L (depths [1,1,2,1,1] / [2,2,4,2,2] / [4,4,8,4,4] / [8,8,16,8,8]). Default 'S'.
        embed_dims (list[int] | None): Stage widths, default [24, 48, 96, 48, 24].
        depths (list[int] | None): Stage depths; overrides the preset.
        in_chans (int): Input channels (3).
        out_chans (int): Body output channels: 1 for K and 3 for B (4).
        data_range (str): 'signed' (input/output in [-1, 1], the reference convention, default) or 'unit'
            ([0, 1] in and out, converted inside). The weights are the same for both; MixCLDehazeModel and the CLI
            (:func:`mixcl_arch.utils.net_call.run_net`) and the export feed a net in the range it declares.

    Shapes:
        forward(x): (B, 3, H, W) -> (B, 3, H, W), any H, W.
    """
    num_cond = 0
    cond_dim = 512

    def __init__(self, variant='S', embed_dims=None, depths=None, in_chans=3, out_chans=4, data_range='signed'):
        super().__init__()
        _check_data_range(data_range)
        embed_dims, depths = resolve_preset(variant, embed_dims, depths)
        self.in_chans = in_chans
        self.data_range = data_range
        self._build_backbone(in_chans, out_chans, embed_dims, depths)

    def forward(self, x):
        self._check_input(x, self.in_chans)
        h, w = x.shape[2:]
        x = self.check_image_size(self._to_signed(x))
        return self._from_signed(self._reconstruct(self.forward_body(x), x, h, w))


@ARCH_REGISTRY.register()
class MixCLDehazeNet(_MixDehazeBackbone):
    """MixCLDehazeNet: MixDehazeNet conditioned on CLIP features through parametric attention.

    Each conditioning vector (``num_cond`` of them) is fused with the image by a :class:`CLIPTextFusion` giving
    ``fusion_chans`` channels, which are concatenated with the RGB input before the patch embedding. With
    ``num_cond=1`` (default) this is exactly the reference model (``text_emb``; patch embed takes 6 channels). Extra
    vectors (soft features of other prompt sets, the CLIP image embedding) get their own fusions ``text_emb_extra.i``.
    ``fusion`` and ``combine`` select the reference's earlier variants for ablations (:mod:`.text_fusion`).

    Args:
        variant, embed_dims, depths, out_chans, data_range: As :class:`MixDehazeNet`.
        in_chans (int): Image channels (3).
        text_dim (int): Length of each conditioning vector (512 for ViT-B/32).
        proj_dim (int): Query/key/value size of the fusion (5).
        fusion_chans (int): Channels produced per fusion (3).
        num_cond (int): Number of conditioning vectors K per image (1 = reference).
        fusion_max_elements (int): Memory bound of the fused attention (elements per chunk).
        fusion (str): 'parametric' (default, :class:`CLIPTextFusion`), 'calip' (:class:`CALIPFusion`, no
            parameters), 'parametric_linear' (:class:`LinearParametricFusion`) or 'textemb' (:class:`TextEmbFusion`,
            added to the patch embedding).
        combine (str | None): 'concat' (patch embed takes in_chans + fusion_chans * num_cond channels) or 'add'
            (in_chans: image + fusion outputs); None: the reference's choice for ``fusion`` (concat for parametric,
            add for the others).
        fusion_size (int): Fixed resolution side of 'parametric_linear' and 'textemb' (256 in the reference).

    Shapes:
        forward(x, text): x (B, 3, H, W); text (B, text_dim), (B, 1, text_dim) or (B, K, text_dim) -> (B, 3, H, W).
    """
    cond_dim = 512

    def __init__(self,
                 variant='S',
                 embed_dims=None,
                 depths=None,
                 in_chans=3,
                 out_chans=4,
                 text_dim=512,
                 proj_dim=5,
                 fusion_chans=3,
                 num_cond=1,
                 fusion_max_elements=2**24,
                 data_range='signed',
                 fusion='parametric',
                 combine=None,
                 fusion_size=256):
        super().__init__()
        _check_data_range(data_range)
        self.combine, chans = resolve_fusion(fusion, combine, in_chans, fusion_chans)
        self.fusion = fusion
        if int(num_cond) < 1:
            raise ValueError(f'MixCLDehazeNet needs num_cond >= 1, got {num_cond}; use MixDehazeNet for none.')
        embed_dims, depths = resolve_preset(variant, embed_dims, depths)
        self.in_chans = in_chans
        self.data_range = data_range
        self.num_cond = int(num_cond)
        self.cond_dim = text_dim
        self.text_dim = text_dim

        def make_fusion():
            if fusion == 'calip':
                return CALIPFusion(text_dim)
            if fusion == 'parametric_linear':
                return LinearParametricFusion(in_chans, fusion_chans, text_dim, fusion_size)
            if fusion == 'textemb':
                return TextEmbFusion(embed_dims[0], text_dim, fusion_size)
            return CLIPTextFusion(in_chans, fusion_chans, proj_dim, text_dim, fusion_max_elements)

        self.text_emb = make_fusion()
        if self.num_cond > 1:
            self.text_emb_extra = nn.ModuleList([make_fusion() for _ in range(self.num_cond - 1)])
        body_chans = in_chans + chans * self.num_cond if self.combine == 'concat' else in_chans
        self._build_backbone(body_chans, out_chans, embed_dims, depths)

    def _check_text(self, text, batch):
        if text is None:
            raise ValueError(f'MixCLDehazeNet needs a conditioning tensor of shape (B, {self.num_cond}, '
                             f'{self.text_dim}); got None.')
        shape = tuple(text.shape)
        if text.dim() == 2:
            text = text[:, None]
        if text.dim() != 3 or text.shape[0] != batch or text.shape[1] != self.num_cond \
                or text.shape[2] != self.text_dim:
            expected = f'({batch}, {self.text_dim})' if self.num_cond == 1 else ''
            expected += (' or ' if expected else '') + f'({batch}, {self.num_cond}, {self.text_dim})'
            raise ValueError(f'MixCLDehazeNet text feature: expected shape {expected}, got {shape}.')
        return text

    def forward(self, x, text=None):
        self._check_input(x, self.in_chans)
        text = self._check_text(text, x.shape[0])
        h, w = x.shape[2:]
        x = self.check_image_size(self._to_signed(x))
        fused = [self.text_emb(x, text[:, 0])]
        for i in range(1, self.num_cond):
            fused.append(self.text_emb_extra[i - 1](x, text[:, i]))
        if self.combine == 'concat':
            feat = self.forward_body(torch.cat([x] + fused, dim=1))
        else:
            total = fused[0]
            for f in fused[1:]:
                total = total + f
            feat = self.forward_body(x, total) if self.fusion == 'textemb' else self.forward_body(x + total)
        return self._from_signed(self._reconstruct(feat, x, h, w))
