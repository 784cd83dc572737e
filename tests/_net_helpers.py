"""Shared helpers for network tests: non-trivial BatchNorm statistics, unit text features, activation dtypes."""
import contextlib

import torch
from torch import nn


def randomize_bn(net, seed=0):
    """Give BatchNorm layers non-trivial statistics and affine parameters so eval-mode comparisons exercise them.

    Args:
        net (nn.Module): Network changed in place.
        seed (int): Generator seed.

    Returns:
        nn.Module: ``net``.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=g) - 0.5)
    return net


def unit_text(b, k=None, seed=0):
    """Unit-norm stand-ins for CLIP text features: (B, 512), or (B, K, 512) when ``k`` is given."""
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(b, 512, generator=g) if k is None else torch.randn(b, k, 512, generator=g)
    return t / t.norm(dim=-1, keepdim=True)


@contextlib.contextmanager
def conv_output_dtypes():
    """Record the output dtype of every ``nn.Conv2d`` call of any module while the block runs.

    A global forward hook, so it also sees networks built inside the code under test (the CLI, the model).

    Yields:
        list[torch.dtype]: Filled as convolutions run.
    """
    dtypes = []

    def hook(module, args, output):
        if isinstance(module, nn.Conv2d):
            dtypes.append(output.dtype)

    handle = nn.modules.module.register_module_forward_hook(hook)
    try:
        yield dtypes
    finally:
        handle.remove()
