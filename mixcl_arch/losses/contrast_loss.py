"""Contrastive regularisation of MixDehazeNet / MixCLDehazeNet (their ``utils/CR_res.py``).

Features of a frozen ImageNet ResNet at 4 stages (stem + layer1, layer2, layer3, layer4) pull the output towards the
ground truth (positive) and push it away from the hazy input (negative):
``sum_i w_i * L1(f_i(out), f_i(gt)) / (L1(f_i(out), f_i(hazy)) + 1e-7)`` with ``w = (1/16, 1/8, 1/4, 1)``.
"""
import glob
import os

import torch
import torchvision
from basicsr.utils.registry import LOSS_REGISTRY
from torch import nn as nn
from torch.nn import functional as F

from mixcl_arch.utils.checkpoint import load_network_weights

RESNET_DEPTHS = (18, 34, 50, 101, 152)
INPUT_RANGES = ('signed', 'unit', 'imagenet')
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def torchvision_resnet_filenames(depth):
    """File names torchvision uses for its ImageNet ResNet weights, V1 (the reference's ``pretrained=True``) first.

    Returns:
        list[str]: e.g. ``['resnet152-394f9c45.pth', 'resnet152-f82ba261.pth']`` for depth 152.
    """
    enum = getattr(torchvision.models, f'ResNet{depth}_Weights')
    return [os.path.basename(w.url) for w in enum]


def find_resnet_weights(depth=152, resnet_path=None):
    """Locate ImageNet ResNet weights: ``resnet_path`` if given, else torchvision's cache.

    Args:
        depth (int): ResNet depth.
        resnet_path (str | None): Local file (a torchvision state dict, a BasicSR/official checkpoint or
            safetensors).

    Returns:
        str: The weights file.

    Raises:
        FileNotFoundError: Naming the torchvision file to download and the option to set.
    """
    if depth not in RESNET_DEPTHS:
        raise ValueError(f'ContrastLossRes: depth must be one of {RESNET_DEPTHS}, got {depth}.')
    names = torchvision_resnet_filenames(depth)
    if resnet_path is not None:
        resnet_path = os.path.expanduser(str(resnet_path))
        if not os.path.isfile(resnet_path):
            raise FileNotFoundError(f'ContrastLossRes: resnet_path {resnet_path} does not exist. Download '
                                    f'https://download.pytorch.org/models/{names[0]} (torchvision ResNet{depth} '
                                    'IMAGENET1K_V1) and point `resnet_path` at it.')
        return resnet_path
    cache = os.path.join(torch.hub.get_dir(), 'checkpoints')
    for name in names:
        hits = sorted(glob.glob(os.path.join(cache, name)))
        if hits:
            return hits[0]
    also = f'; {names[1]} = IMAGENET1K_V2 also works' if len(names) > 1 else ''
    raise FileNotFoundError(
        f'ContrastLossRes needs ImageNet ResNet{depth} weights, which cannot be downloaded here. Get '
        f'https://download.pytorch.org/models/{names[0]} (torchvision {names[0]}, IMAGENET1K_V1 as the reference'
        f'{also}) and either put it in {cache} or set the loss option `resnet_path: /path/to/{names[0]}` '
        '(train.cr_opt.resnet_path in the YAML).')


class ResNetStages(nn.Module):
    """Frozen torchvision ResNet returning the outputs of (stem + layer1), layer2, layer3 and layer4.

    Args:
        depth (int): 18, 34, 50, 101 or 152.
        weights_path (str | None): Weights file; None leaves the random init (only useful in tests).
        batch_stats (bool): BatchNorm with batch statistics, as the reference (True), or ImageNet running
            statistics (False).
        allow_unsafe_pickle (bool): Fully unpickle a legacy weights file that ``weights_only`` refuses (can run
            code).

    Shapes:
        forward(x): (B, 3, H, W) -> list of 4 tensors, strides 4, 8, 16, 32.
    """

    def __init__(self, depth=152, weights_path=None, batch_stats=True, allow_unsafe_pickle=False):
        super().__init__()
        if depth not in RESNET_DEPTHS:
            raise ValueError(f'ContrastLossRes: depth must be one of {RESNET_DEPTHS}, got {depth}.')
        net = getattr(torchvision.models, f'resnet{depth}')(weights=None)
        if weights_path is not None:
            load_network_weights(net, weights_path, param_key=None, strict=True,
                                 allow_unsafe_pickle=allow_unsafe_pickle)
        self.slice1 = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1)
        self.slice2 = net.layer2
        self.slice3 = net.layer3
        self.slice4 = net.layer4
        for p in self.parameters():
            p.requires_grad_(False)
        if batch_stats:
            # the reference never puts its ResNet in eval mode: BatchNorm normalises with each call's batch
            # statistics. Dropping the running buffers gives exactly that in any mode, without mutating state.
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.track_running_stats = False
                    m.running_mean = m.running_var = m.num_batches_tracked = None
        self.eval()

    def train(self, mode=True):
        """Stay in eval mode: the features are frozen, BatchNorm statistics included."""
        return super().train(False)

    def forward(self, x):
        feats = []
        for stage in (self.slice1, self.slice2, self.slice3, self.slice4):
            x = stage(x)
            feats.append(x)
        return feats


@LOSS_REGISTRY.register()
class ContrastLossRes(nn.Module):
    """Contrastive regularisation with frozen ImageNet ResNet features (reference ``ContrastLoss_res``).

    Args:
        loss_weight (float): Weight of the whole term (0.1 in the reference).
        resnet_path (str | None): ResNet weights file; None looks in torchvision's cache
            (``torch.hub.get_dir()/checkpoints/resnet152-394f9c45.pth``). Missing -> FileNotFoundError.
        depth (int): ResNet depth (152 as the reference; smaller only for tests / experiments).
        layer_weights (list[float]): Per-stage weights, shallow to deep (1/16, 1/8, 1/4, 1).
        input_range (str): How [0, 1] images are mapped before the ResNet: 'signed' -> [-1, 1] (what the reference
            feeds: its data are in [-1, 1] and it does not normalise), 'unit' -> unchanged, 'imagenet' -> ImageNet
            mean/std normalisation.
        ablation (bool): Drop the negative (denominator), as the reference's ``ablation=True``.
        eps (float): Added to the negative distance (1e-7).
        batchnorm (str): 'batch' (default): the ResNet's BatchNorm uses each call's batch statistics, as the
            reference, whose ResNet stays in training mode (needs B * H/32 * W/32 > 1, as the reference does);
            'frozen': ImageNet running statistics.
        allow_unsafe_pickle (bool): Let a legacy ``resnet_path`` that ``torch.load(weights_only=True)`` refuses be
            fully unpickled (it can run code; warns). Default False: such a file is an error.

    Shapes:
        forward(pred, target, negative): three (B, 3, H, W) tensors in [0, 1] -> scalar.
    """

    def __init__(self,
                 loss_weight=0.1,
                 resnet_path=None,
                 depth=152,
                 layer_weights=(1. / 16, 1. / 8, 1. / 4, 1.),
                 input_range='signed',
                 ablation=False,
                 eps=1e-7,
                 batchnorm='batch',
                 allow_unsafe_pickle=False):
        super().__init__()
        if batchnorm not in ('batch', 'frozen'):
            raise ValueError(f"ContrastLossRes: batchnorm must be 'batch' or 'frozen', got {batchnorm!r}.")
        if input_range not in INPUT_RANGES:
            raise ValueError(f'ContrastLossRes: input_range must be one of {INPUT_RANGES}, got {input_range!r}.')
        if len(layer_weights) != 4:
            raise ValueError(f'ContrastLossRes: layer_weights needs 4 values, got {list(layer_weights)}.')
        self.loss_weight = float(loss_weight)
        self.layer_weights = [float(w) for w in layer_weights]
        self.input_range = input_range
        self.ablation = bool(ablation)
        self.eps = float(eps)
        if not isinstance(allow_unsafe_pickle, bool):
            raise ValueError(f'ContrastLossRes: allow_unsafe_pickle must be true or false, got '
                             f'{allow_unsafe_pickle!r}.')
        self.features = ResNetStages(depth, find_resnet_weights(depth, resnet_path), batchnorm == 'batch',
                                     allow_unsafe_pickle)
        self.register_buffer('mean', torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer('std', torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def _prep(self, x):
        if self.input_range == 'signed':
            return x * 2 - 1
        if self.input_range == 'imagenet':
            return (x - self.mean) / self.std
        return x

    def forward(self, pred, target, negative):
        for name, t in (('target', target), ('negative', negative)):
            if t.shape != pred.shape:
                raise ValueError(f'ContrastLossRes: {name} shape {tuple(t.shape)} != pred shape {tuple(pred.shape)}.')
        f_pred = self.features(self._prep(pred))
        with torch.no_grad():
            f_pos = self.features(self._prep(target))
            f_neg = None if self.ablation else self.features(self._prep(negative))
        loss = 0
        for i, w in enumerate(self.layer_weights):
            d_ap = F.l1_loss(f_pred[i], f_pos[i])
            term = d_ap if self.ablation else d_ap / (F.l1_loss(f_pred[i], f_neg[i]) + self.eps)
            loss = loss + w * term
        return self.loss_weight * loss
