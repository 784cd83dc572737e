"""Helpers shared by the classic baselines (DCP, DehazeNet recovery)."""
import torch

LUMA = (0.299, 0.587, 0.114)


def check_image(x, name='x'):
    """Raise ValueError unless ``x`` is a float (B, 3, H, W) tensor."""
    if not torch.is_tensor(x) or x.dim() != 4 or x.shape[1] != 3:
        shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
        raise ValueError(f'{name} must be a (B, 3, H, W) RGB tensor in [0, 1], got {shape}.')
    if not x.is_floating_point():
        raise ValueError(f'{name} must be a float tensor in [0, 1], got dtype {x.dtype}.')


def grey(x):
    """(B, 3, H, W) RGB -> (B, 1, H, W) luma (ITU-R BT.601 weights)."""
    return (x * x.new_tensor(LUMA)[None, :, None, None]).sum(dim=1, keepdim=True)


def to_bool(v, key):
    """Read a bool option that may come from the command line as a string; ValueError names ``key``."""
    if isinstance(v, str):
        low = v.strip().lower()
        if low in ('1', 'true', 'yes', 'on'):
            return True
        if low in ('0', 'false', 'no', 'off'):
            return False
        raise ValueError(f'{key}: cannot read {v!r} as a boolean')
    return bool(v)
