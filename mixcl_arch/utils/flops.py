"""Multiply-accumulate (MAC) counting for the benchmark tables.

Two counters, which agree on plain conv/linear nets:

- ``'flop_counter'`` (default): ``torch.utils.flop_counter.FlopCounterMode`` counts every conv, matmul, bmm,
  addmm, baddbmm and scaled-dot-product attention the forward pass runs, so attention and einsum-style
  fusions are included; MACs = FLOPs / 2. Element-wise ops, norms, activations and pooling are not counted
  (the usual convention for papers' "MACs").
- ``'hooks'``: forward hooks on ``nn.Conv*d``, ``nn.ConvTranspose*d`` and ``nn.Linear`` only:
  conv MACs = output elements * (in_channels / groups) * prod(kernel); linear MACs = output elements * in_features.
"""
import torch
from torch import nn

__all__ = ['count_macs', 'format_count']

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def _net_inputs(net, size, device, dtype):
    b, c, h, w = size
    x = torch.rand(b, c, h, w, device=device, dtype=dtype)
    if getattr(net, 'needs_density', False) or getattr(net, 'needs_embedding', False):
        # CLIPHazeNet: a density map at the feature store's 1/8 and an image embedding
        density = torch.rand(b, 1, max(h // 8, 1), max(w // 8, 1), device=device, dtype=dtype)
        embedding = torch.randn(b, net.cfg.embed_dim, device=device, dtype=dtype)
        return (x, density if net.needs_density else None, embedding if net.needs_embedding else None)
    num_cond = int(getattr(net, 'num_cond', 0) or 0)
    if num_cond == 0:
        return (x, )
    cond_dim = int(getattr(net, 'cond_dim', 512))
    cond = torch.randn(b, num_cond, cond_dim, device=device, dtype=dtype)
    return (x, cond)


def _hook_macs(net, inputs):
    total = [0]

    def hook(module, inp, out):
        if isinstance(module, _CONVS):
            if isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
                # each input element is scattered through the kernel to out_channels / groups outputs
                k = 1
                for s in module.kernel_size:
                    k *= s
                total[0] += inp[0].numel() * (module.out_channels // module.groups) * k
            else:
                k = 1
                for s in module.kernel_size:
                    k *= s
                total[0] += out.numel() * (module.in_channels // module.groups) * k
        elif isinstance(module, nn.Linear):
            total[0] += out.numel() * module.in_features

    handles = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, _CONVS + (nn.Linear, ))]
    try:
        net(*inputs)
    finally:
        for h in handles:
            h.remove()
    return total[0]


def _flop_counter_macs(net, inputs):
    from torch.utils.flop_counter import FlopCounterMode
    counter = FlopCounterMode(display=False)
    with counter:
        net(*inputs)
    return counter.get_total_flops() // 2


@torch.no_grad()
def count_macs(net, input_size=(1, 3, 256, 256), method='flop_counter', device=None):
    """MACs of one forward pass of ``net`` on a random input of ``input_size``.

    Nets with ``num_cond > 0`` get a random (B, num_cond, cond_dim) conditioning stack as second argument (the
    conditioning MACs are counted; the CLIP encoder that produces it in practice is not). CLIPHazeNet gets a random
    density map at 1/8 of the input and image embedding, those it takes.

    Args:
        net (nn.Module): The network (its train/eval mode is restored afterwards; it runs in eval mode).
        input_size (tuple[int]): (B, C, H, W), default (1, 3, 256, 256).
        method (str): 'flop_counter' or 'hooks' (see the module docstring).
        device (str | torch.device | None): Where to run; default: the device of the net's first parameter.

    Returns:
        int: Multiply-accumulates for the whole batch.

    Raises:
        ValueError: Unknown method or a bad input size.
    """
    if method not in ('flop_counter', 'hooks'):
        raise ValueError(f"count_macs method must be 'flop_counter' or 'hooks', got {method!r}.")
    if len(input_size) != 4:
        raise ValueError(f'input_size must be (B, C, H, W), got {input_size}.')
    param = next(net.parameters(), None)
    if device is None:
        device = param.device if param is not None else torch.device('cpu')
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    inputs = _net_inputs(net, input_size, device, dtype)
    was_training = net.training
    net.eval()
    try:
        if method == 'hooks':
            return int(_hook_macs(net, inputs))
        return int(_flop_counter_macs(net, inputs))
    finally:
        net.train(was_training)


def format_count(n, unit=''):
    """Human readable count: 1761 -> '1.76K', 114425856 -> '114.43M', 0 -> '0'."""
    n = float(n)
    for div, suffix in ((1e12, 'T'), (1e9, 'G'), (1e6, 'M'), (1e3, 'K')):
        if abs(n) >= div:
            return f'{n / div:.2f}{suffix}{unit}'
    return f'{n:g}{unit}'
