"""DehazeNet (Cai, Xu, Jia, Qing, Tao, "DehazeNet: An End-to-End System for Single Image Haze Removal", TIP 2016).

The network predicts the medium transmission t of a hazy image; the clear image is recovered outside the network
(:mod:`mixcl_arch.baselines.dehazenet`).

Padding. The paper trains on 16x16 patches with valid convolutions (a 16x16 patch -> one t value; the multi-scale
convolutions zero pad inside the patch). That layout cannot be slid over a full image and give the same values: on a
full image the multi-scale convolutions see real neighbours where the patch saw zeros. Here every layer pads so
that the output has the input's size on any H x W, and training uses exactly the same function:

- the 5x5 convolution and the three multi-scale convolutions pad by k // 2 with reflect padding;
- the 7x7 max pool pads by 3 with -inf (PyTorch's pool padding), i.e. the window is clipped at the border
  (computed as a 1x7 then a 7x1 pool, which gives the same maxima);
- the 6x6 convolution has no centre: it pads 2 rows/columns before and 3 after (reflect), so output pixel (i, j)
  sees rows i-2 .. i+3 of its input.

A 16x16 training patch synthesised with one constant t gets a 16x16 map of targets (every pixel regresses the
patch's t, the paper's locally constant transmission assumption), so each patch gives 256 targets instead of one and
the network that is trained is the network that runs on full images. The receptive field is 22x22 pixels (11 px
each side); pixels near a patch border see reflected content in training, like pixels near the image border at
inference.
"""
import torch
import torch.nn.functional as F
from basicsr.utils.registry import ARCH_REGISTRY
from torch import nn

from mixcl_arch.archs.arch_util import pad_reflect_or_replicate


class Maxout(nn.Module):
    """Maxout across channels: C input maps in ``groups`` consecutive groups, the element-wise max of each group.

    Group g holds channels ``[g * C / groups, (g + 1) * C / groups)``; output channel g is their maximum.

    Args:
        groups (int): Number of output maps (C must be a multiple of it).

    Shapes:
        forward(x): (B, C, H, W) -> (B, groups, H, W).
    """

    def __init__(self, groups=4):
        super().__init__()
        if int(groups) < 1:
            raise ValueError(f'Maxout groups must be >= 1, got {groups}.')
        self.groups = int(groups)

    def forward(self, x):
        b, c, h, w = x.shape
        if c % self.groups:
            raise ValueError(f'Maxout: {c} channels cannot be split into {self.groups} groups.')
        return x.reshape(b, self.groups, c // self.groups, h, w).amax(dim=2)

    def extra_repr(self):
        return f'groups={self.groups}'


class BReLU(nn.Module):
    """Bilateral ReLU: ``min(max(x, t_min), t_max)``, identity (gradient 1) inside, constant (gradient 0) outside.

    Args:
        t_min (float): Lower bound (0 for a transmission).
        t_max (float): Upper bound (1 for a transmission).
    """

    def __init__(self, t_min=0.0, t_max=1.0):
        super().__init__()
        if not float(t_min) < float(t_max):
            raise ValueError(f'BReLU needs t_min < t_max, got {t_min} and {t_max}.')
        self.t_min, self.t_max = float(t_min), float(t_max)

    def forward(self, x):
        return x.clamp(self.t_min, self.t_max)

    def extra_repr(self):
        return f't_min={self.t_min}, t_max={self.t_max}'


@ARCH_REGISTRY.register()
class DehazeNet(nn.Module):
    """DehazeNet transmission estimator (8,305 parameters with the default sizes).

    Layers (channels; size-preserving padding as described in the module docstring)::

        feature extraction   conv 5x5, 3 -> 16, then Maxout over 4 groups -> 4 maps         1,216 params
        multi-scale mapping  conv 3x3 / 5x5 / 7x7, 4 -> 16 each, concatenated -> 48 maps   5,360 params
        local extremum       max pool 7x7, stride 1                                            0 params
        non-linear regress.  conv 6x6, 48 -> 1, then BReLU (clamp to [0, 1])               1,729 params

    The paper has no non-linearity after the multi-scale convolutions; none is added here.

    Args:
        num_features (int): Filters of the first convolution (16).
        maxout_groups (int): Maps after Maxout (4).
        multiscale_features (int): Filters of each multi-scale convolution (16).
        pool_size (int): Local extremum window (7).
        regress_size (int): Kernel of the regression convolution (6).
        t_min (float): BReLU lower bound (0).
        t_max (float): BReLU upper bound (1).
        init_std (float | None): Std of a Gaussian weight init (the paper: 0.001); None keeps PyTorch's default
            init (default, trains faster). The regression bias starts at (t_min + t_max) / 2 either way, so the
            BReLU starts in its linear range and passes gradients.

    Attributes:
        num_cond (int): 0, unconditioned (models call ``net(lq)``).
        cond_dim (int): 512, for interface compatibility.

    Shapes:
        forward(x): (B, 3, H, W) hazy in [0, 1] -> t (B, 1, H, W) in [0, 1], any H, W >= 1.
    """
    num_cond = 0
    cond_dim = 512

    def __init__(self, num_features=16, maxout_groups=4, multiscale_features=16, pool_size=7,
                 regress_size=6, t_min=0.0, t_max=1.0, init_std=None):
        super().__init__()
        if num_features % maxout_groups:
            raise ValueError(f'DehazeNet num_features ({num_features}) must be a multiple of maxout_groups '
                             f'({maxout_groups}).')
        if pool_size < 1 or pool_size % 2 == 0 or regress_size < 1:
            raise ValueError(f'DehazeNet needs an odd pool_size >= 1 and regress_size >= 1, got {pool_size}, '
                             f'{regress_size}.')
        self.pool_size = int(pool_size)
        self.regress_size = int(regress_size)
        self.conv1 = nn.Conv2d(3, num_features, 5)
        self.maxout = Maxout(maxout_groups)
        self.ms_convs = nn.ModuleList(nn.Conv2d(maxout_groups, multiscale_features, k) for k in (3, 5, 7))
        self.conv_regress = nn.Conv2d(3 * multiscale_features, 1, regress_size)
        self.brelu = BReLU(t_min, t_max)
        if init_std is not None:
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.normal_(m.weight, 0.0, float(init_std))
                    nn.init.zeros_(m.bias)
        nn.init.constant_(self.conv_regress.bias, 0.5 * (float(t_min) + float(t_max)))

    def _pad(self, x, before, after):
        if before + after == 0:
            return x
        # reflect needs the padding < the size; tiny inputs (< 4 px) fall back to replicate (chosen without a
        # Python branch on the size, so the exported graph keeps H and W dynamic)
        return pad_reflect_or_replicate(x, before, after, before, after)

    def forward(self, x):
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f'DehazeNet expects a (B, 3, H, W) input, got {tuple(x.shape)}.')
        feat = self.maxout(self.conv1(self._pad(x, 2, 2)))
        feat = torch.cat([conv(self._pad(feat, conv.kernel_size[0] // 2, conv.kernel_size[0] // 2))
                          for conv in self.ms_convs], dim=1)
        # the 7x7 max is separable: a 1x7 then a 7x1 max pool (14 instead of 49 comparisons per output, same result)
        k, r = self.pool_size, self.pool_size // 2
        feat = F.max_pool2d(F.max_pool2d(feat, (1, k), 1, (0, r)), (k, 1), 1, (r, 0))
        k = self.regress_size
        feat = self._pad(feat, (k - 1) // 2, k // 2)
        return self.brelu(self.conv_regress(feat))
