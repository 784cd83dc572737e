"""Ablation variants of MixCLDehazeNet's text fusion (``network_g.fusion``), transcribed from the reference code.

The reference (github DanielHo-BS/MixCLDehazeNet, ``models/MixDehazeNet.py`` and its history) tried, in order:
``TextEmb`` (a linear map of the text added to the patch embedding), the parameter-free CALIP attention
(``CrossModalAttention`` / ``CrossModalAttention2``), ``ParametricAttention`` (linear layers on the whole image) and
``ParametricAttention2`` (1x1 projections, the final model:
:class:`~mixcl_arch.archs.mixdehazenet_arch.CLIPTextFusion`), first added to the image (F_s + F_s'), finally
concatenated with it. Each module below returns only the image-side
update F_s'; :class:`~mixcl_arch.archs.mixdehazenet_arch.MixCLDehazeNet` adds or concatenates it (``combine``). The
text-side update F_t' never reaches the dehazing backbone in the reference, so it is not computed here.
"""
import math

import torch
from torch import nn as nn
from torch.nn import functional as F

from mixcl_arch.archs.arch_util import pad_reflect_or_replicate

# fusion -> how the reference combined its output with the image when it used that fusion
FUSION_COMBINE = {'parametric': 'concat', 'calip': 'add', 'parametric_linear': 'add', 'textemb': 'add'}
COMBINES = ('concat', 'add')


def resolve_fusion(fusion, combine, in_chans, fusion_chans):
    """Check ``network_g.fusion`` / ``combine`` and return the combine mode and the channels the fusion yields.

    Args:
        fusion (str): One of :data:`FUSION_COMBINE`.
        combine (str | None): 'concat' (image and fusion output side by side), 'add' (image + fusion output), or
            None for the reference's choice with that fusion. ``textemb`` always adds (to the patch embedding).
        in_chans (int): Image channels.
        fusion_chans (int): Channels of the fusion output (``parametric`` / ``parametric_linear``).

    Returns:
        tuple[str, int]: (combine, output channels of one fusion; 0 for ``textemb``, which acts after the embedding).
    """
    if fusion not in FUSION_COMBINE:
        raise ValueError(f'network_g.fusion must be one of {list(FUSION_COMBINE)}, got {fusion!r}.')
    combine = FUSION_COMBINE[fusion] if combine is None else combine
    if combine not in COMBINES:
        raise ValueError(f'network_g.combine must be one of {list(COMBINES)} or ~ (the fusion\'s reference choice), '
                         f'got {combine!r}.')
    if fusion == 'textemb':
        if combine != 'add':
            raise ValueError("network_g.fusion 'textemb' adds its map to the patch embedding; combine must be 'add' "
                             f'or ~, got {combine!r}.')
        return combine, 0
    chans = in_chans if fusion == 'calip' else fusion_chans  # CALIP's update is the image itself, re-weighted
    if combine == 'add' and chans != in_chans:
        raise ValueError(f'network_g.combine: add needs fusion_chans == in_chans ({in_chans}), got {chans}.')
    return combine, chans


class CALIPFusion(nn.Module):
    """Parameter-free CALIP attention of the reference (``CrossModalAttention2``), image side.

    The image is reflect-padded until H*W is a multiple of ``text_dim`` (the reference's rule, kept with its quirks),
    laid out as (H, W, C) and cut into N = H*W*C / ``text_dim`` tokens of ``text_dim`` consecutive values. The text
    feature is the single key and value: token n gets weight a_n = softmax_n(<token_n, text> / sqrt(N)) (a softmax
    over the N image tokens) and the update is a_n * text, laid back out as (C, H, W) and cropped. The attention map
    is (B, N, 1), so no (H*W) x ``text_dim`` matrix exists to be avoided: memory is O(image) as written. The weights
    depend on the whole image (softmax over all tokens, N grows with the size), so tiled inference differs from a
    whole-image pass.

    Args:
        text_dim (int): Text feature length, a power of two (512).
    """

    def __init__(self, text_dim=512):
        super().__init__()
        self.bits = int(text_dim).bit_length() - 1
        if text_dim != 1 << self.bits:
            raise ValueError(f'fusion calip cuts the image into tokens of text_dim values and pads H, W by powers of '
                             f'two; text_dim must be a power of two, got {text_dim}.')
        self.text_dim = text_dim

    def _pad(self, x):
        """The reference's check_image_size: pad H to a multiple of 2^a and W to 2^b, a + b = log2(text_dim).

        As in the reference a full period is added to an axis that is already a multiple (only when H*W is not).
        """
        h, w = x.shape[-2:]
        if h * w % self.text_dim == 0:
            return x
        a = round(self.bits * h / (h + w))
        b = self.bits - a
        return pad_reflect_or_replicate(x, 0, 2**b - w % 2**b, 0, 2**a - h % 2**a)

    def forward(self, x, text):
        """
        Args:
            x (Tensor): (B, C, H, W) image.
            text (Tensor): (B, text_dim) text feature.

        Returns:
            Tensor: (B, C, H, W) update (the reference adds it to ``x``).
        """
        b, c, h, w = x.shape
        xp = self._pad(x)
        hp, wp = xp.shape[-2:]
        tokens = xp.permute(0, 2, 3, 1).reshape(b, -1, self.text_dim)  # (B, N, L)
        scores = torch.bmm(tokens, text[:, :, None])[..., 0] / math.sqrt(tokens.shape[1])  # (B, N)
        update = torch.softmax(scores, dim=1)[:, :, None] * text[:, None, :]  # (B, N, L)
        return update.view(b, hp, wp, c).permute(0, 3, 1, 2)[:, :, :h, :w]


class LinearParametricFusion(nn.Module):
    """The reference's ``ParametricAttention``: linear projections of the whole image, attention across the batch.

    The image is resized (bilinear) to ``size`` x ``size`` and flattened; q1 projects it to a ``text_dim`` query per
    image, k2 / v2 project each image's text feature. As in the reference the scores Q K^T are (B, B), scaled by
    1/sqrt(B) and normalised over the batch: image i receives sum_j softmax_j(q_i . k_j / sqrt(B)) v_j (with B = 1 the
    weight is 1 and the update does not depend on the image). postProj_s maps that back to ``out_chans`` x ``size``^2,
    resized (bilinear) to the input size.

    Lean: the reference's k1, v1, q2 and postProj_t (201,852,928 parameters at 256 / 512, half the module) only feed
    the text-side update, which the backbone never uses, so they are not built; keys of the rest are the reference's.
    What remains cannot shrink: q1 and postProj_s are dense ``text_dim`` x (C * size^2) matrices.

    Args:
        in_chans (int): Image channels.
        out_chans (int): Update channels.
        text_dim (int): Text feature length, also the attention width (512).
        size (int): Side of the fixed resolution the image is resized to (256 in the reference).
    """

    def __init__(self, in_chans=3, out_chans=3, text_dim=512, size=256):
        super().__init__()
        self.size = size
        self.q1 = nn.Linear(in_chans * size * size, text_dim)
        self.k2 = nn.Linear(text_dim, text_dim)
        self.v2 = nn.Linear(text_dim, text_dim)
        self.postProj_s = nn.Linear(text_dim, out_chans * size * size)

    def forward(self, x, text):
        """
        Args:
            x (Tensor): (B, in_chans, H, W) image.
            text (Tensor): (B, text_dim) text feature.

        Returns:
            Tensor: (B, out_chans, H, W) update.
        """
        b, _, h, w = x.shape
        s = self.size
        q = self.q1(F.interpolate(x, size=(s, s), mode='bilinear', align_corners=False).reshape(b, -1))  # (B, D)
        attn = torch.softmax(q @ self.k2(text).t() / math.sqrt(b), dim=1)  # (B, B): over the batch, as the reference
        out = self.postProj_s(attn @ self.v2(text)).view(b, -1, s, s)
        return F.interpolate(out, size=(h, w), mode='bilinear', align_corners=False)


class TextEmbFusion(nn.Module):
    """The reference's ``TextEmb``: a linear map of the text feature to an (embed_dim, size, size) offset.

    MixCLDehazeNet adds ``0.1 * proj(text)`` to the patch embedding of the (3-channel) image. The reference only runs
    at ``size`` x ``size`` (its view fails elsewhere); at other sizes (e.g. full-image validation) the offset is
    resized bilinearly, which is this project's extension. Not lean: proj is a dense (embed_dim * size^2) x text_dim
    matrix (806,879,232 parameters for 24 channels at 256 x 256), the map itself.

    Args:
        embed_dim (int): Channels of the patch embedding (embed_dims[0]).
        text_dim (int): Text feature length (512).
        size (int): Side of the offset map (256 in the reference).
    """

    def __init__(self, embed_dim=24, text_dim=512, size=256):
        super().__init__()
        self.size = size
        self.weight = 0.1
        self.proj = nn.Linear(text_dim, embed_dim * size * size)

    def forward(self, x, text):
        """
        Args:
            x (Tensor): (B, C, H, W) image; only its size is used.
            text (Tensor): (B, text_dim) text feature.

        Returns:
            Tensor: (B, embed_dim, H, W) offset for the patch embedding.
        """
        b, _, h, w = x.shape
        emb = self.proj(text).view(b, -1, self.size, self.size)
        if (h, w) != (self.size, self.size):
            emb = F.interpolate(emb, size=(h, w), mode='bilinear', align_corners=False)
        return emb * self.weight
