"""How training, validation, the CLI and the benchmarks call a dehazing net: its data range, its conditioning and
its autocast dtype.

One home for these, so that the training model and the inference restorers feed a net the same way.
"""
import torch

# autocast dtype of an ``amp`` option value (``train.amp``, the restorers' ``amp``); None or 'none': no autocast
AMP_DTYPES = {'bf16': torch.bfloat16, 'fp16': torch.float16}


def amp_dtype(amp, key='amp'):
    """The autocast dtype of the option value ``amp`` (None for None / 'none').

    Raises:
        ValueError: Naming ``key`` and the allowed values.
    """
    if amp in (None, 'none'):
        return None
    if amp not in AMP_DTYPES:
        raise ValueError(f'{key} must be one of {", ".join(AMP_DTYPES)} or ~ (null), got {amp!r}.')
    return AMP_DTYPES[amp]


def run_net(net, x, cond=None, data_range='unit'):
    """Run a dehazing net on [0, 1] images whatever range it takes: the one place where the data range of the images
    (always [0, 1] here: data pipeline, CLI, benchmarks) meets the net's ``data_range``.

    Args:
        net (callable): The net, possibly wrapped (DDP, ``torch.compile``), called as ``net(x)``, ``net(x, cond)`` or
            ``net(x, **cond)``.
        x (Tensor): (B, 3, H, W) images in [0, 1].
        cond (Tensor | dict | None): MixCLDehazeNet's (B, K, E) conditioning (second argument), a dict of keyword
            inputs (CLIPHazeNet's ``density`` (B, 1, h, w) and ``embedding`` (B, E)), or None for an unconditioned
            net.
        data_range (str): The bare net's ``data_range``: 'unit' (takes [0, 1]) or 'signed' (takes [-1, 1], the
            official MixDehazeNet convention: converted here on the way in and out).

    Returns:
        Tensor: (B, 3, H, W) output in [0, 1] (float32 for a 'signed' net, else the net's dtype).
    """
    if data_range == 'signed':
        x = x * 2 - 1
    if cond is None:
        y = net(x)
    else:
        y = net(x, **cond) if isinstance(cond, dict) else net(x, cond)
    return (y.float() + 1) * 0.5 if data_range == 'signed' else y


def cliphaze_inputs(net):
    """The conditioning inputs a (bare) net takes as keywords: CLIPHazeNet's ``needs_density`` / ``needs_embedding``.

    Returns:
        tuple[str]: Some of ('density', 'embedding'); empty for every other net (and for ``cam: none``).
    """
    return tuple(key for key in ('density', 'embedding') if getattr(net, f'needs_{key}', False))
