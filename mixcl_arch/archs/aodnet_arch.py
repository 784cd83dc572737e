"""AOD-Net (Li, Peng, Wang, Xu, Feng, "AOD-Net: All-in-One Dehazing Network", ICCV 2017)."""
import torch
from basicsr.utils.registry import ARCH_REGISTRY
from torch import nn

AOD_DATA_RANGES = ('unit', 'signed')


@ARCH_REGISTRY.register()
class AODNet(nn.Module):
    """AOD-Net: a 5-conv K-estimation module and the reformulated scattering model J = K * I - K + b.

    K-estimation (each conv followed by ReLU; "concat" joins channels)::

        x1 = conv1(I)                 3 -> 3, 1x1
        x2 = conv2(x1)                3 -> 3, 3x3
        x3 = conv3(cat(x1, x2))       6 -> 3, 5x5
        x4 = conv4(cat(x2, x3))       6 -> 3, 7x7
        K  = conv5(cat(x1, x2, x3, x4)) 12 -> 3, 3x3

    Output ReLU(K * I - K + b) with b = 1. 1761 parameters. The model is defined on images in [0, 1].

    Args:
        b (float): The constant bias b of the reformulated model (1 in the paper).
        init_std (float): Std of the Gaussian weight init (biases start at 0); None keeps PyTorch's default init.
        data_range (str): 'unit' ([0, 1] in and out, default, the paper's convention) or 'signed' ([-1, 1] in and
            out like the MixDehazeNet reference code; converted to [0, 1] inside).

    Attributes:
        num_cond (int): 0, the net takes no conditioning (a model calls ``net(lq)``).
        cond_dim (int): 512, for interface compatibility.

    Shapes:
        forward(x): (B, 3, H, W) -> (B, 3, H, W), any H, W.
    """
    num_cond = 0
    cond_dim = 512

    def __init__(self, b=1.0, init_std=0.02, data_range='unit'):
        super().__init__()
        if data_range not in AOD_DATA_RANGES:
            raise ValueError(f'AODNet data_range must be one of {AOD_DATA_RANGES}, got {data_range!r}.')
        self.data_range = data_range
        self.b = float(b)
        self.conv1 = nn.Conv2d(3, 3, 1, 1, 0)
        self.conv2 = nn.Conv2d(3, 3, 3, 1, 1)
        self.conv3 = nn.Conv2d(6, 3, 5, 1, 2)
        self.conv4 = nn.Conv2d(6, 3, 7, 1, 3)
        self.conv5 = nn.Conv2d(12, 3, 3, 1, 1)
        self.relu = nn.ReLU(inplace=True)
        if init_std is not None:
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.normal_(m.weight, 0.0, float(init_std))
                    nn.init.zeros_(m.bias)

    def estimate_k(self, x):
        """K(x) for x (B, 3, H, W) in [0, 1] -> (B, 3, H, W)."""
        x1 = self.relu(self.conv1(x))
        x2 = self.relu(self.conv2(x1))
        x3 = self.relu(self.conv3(torch.cat((x1, x2), 1)))
        x4 = self.relu(self.conv4(torch.cat((x2, x3), 1)))
        return self.relu(self.conv5(torch.cat((x1, x2, x3, x4), 1)))

    def forward(self, x):
        """Dehaze (B, 3, H, W) -> (B, 3, H, W) in the configured data range."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f'AODNet expects a (B, 3, H, W) input, got {tuple(x.shape)}.')
        if self.data_range == 'signed':
            x = (x + 1) * 0.5
        k = self.estimate_k(x)
        out = torch.relu(k * x - k + self.b)
        return out * 2 - 1 if self.data_range == 'signed' else out
