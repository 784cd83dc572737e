"""Checkpoint I/O shared by the model, the scripts and the CLI.

Two formats are understood:
- BasicSR: ``{'params': state_dict}`` and/or ``{'params_ema': state_dict}``;
- the original MixDehazeNet / MixCLDehazeNet code: ``{'state_dict': {'module.xxx': ...}, 'optimizer': ...,
  'epoch': ..., 'best_psnr': ...}`` (saved from ``nn.DataParallel``, hence the ``module.`` prefix).
A bare state dict (all values tensors) is accepted too.
"""
import os
import re
import warnings
from collections import OrderedDict

import torch

from mixcl_arch.utils.file_io import atomic_torch_save  # noqa: F401  (re-exported)

PARAM_KEYS = ('params_ema', 'params', 'state_dict', 'model', 'net_g')


def load_checkpoint_file(path):
    """Load a checkpoint on CPU, safely (``weights_only``) when possible.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f'Checkpoint file not found: {path}')
    try:
        return torch.load(path, map_location='cpu', weights_only=True)
    except Exception as err:  # pickled extras (e.g. argparse.Namespace) in third-party files
        warnings.warn(f'{path}: weights_only loading failed ({type(err).__name__}); loading it as a full pickle. '
                      'Only do this with files you trust.')
        return torch.load(path, map_location='cpu', weights_only=False)


def extract_state_dict(ckpt, param_key='params', path='<checkpoint>'):
    """Return the network state dict held in ``ckpt`` with any ``module.`` prefix removed.

    Args:
        ckpt (dict): What :func:`load_checkpoint_file` returned.
        param_key (str | None): Preferred key (BasicSR's ``param_key_g``); other known keys are tried when absent.
        path (str): For error messages.

    Returns:
        OrderedDict[str, Tensor]
    """
    if not isinstance(ckpt, dict):
        raise ValueError(f'{path}: expected a dict checkpoint, got {type(ckpt).__name__}.')
    keys = ([param_key] if param_key else []) + [k for k in PARAM_KEYS if k != param_key]
    state = None
    for key in keys:
        if key in ckpt and isinstance(ckpt[key], dict):
            state = ckpt[key]
            break
    if state is None:
        if ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
            state = ckpt
        else:
            raise ValueError(f'{path}: no network weights found; looked for keys {keys} and for a bare state dict. '
                             f'Top-level keys: {sorted(ckpt)[:10]}.')
    out = OrderedDict()
    for k, v in state.items():
        out[k[len('module.'):] if k.startswith('module.') else k] = v
    return out


def _list(names, limit=10):
    names = sorted(names)
    more = f' ... (+{len(names) - limit} more)' if len(names) > limit else ''
    return ', '.join(names[:limit]) + more


def check_state_dict(net, state, path='<checkpoint>', strict=True):
    """Compare ``state`` with ``net.state_dict()``; raise ValueError naming missing/unexpected keys and shapes."""
    own = net.state_dict()
    missing = set(own) - set(state)
    unexpected = set(state) - set(own)
    shapes = [f'{k}: expected {tuple(own[k].shape)}, got {tuple(state[k].shape)}' for k in sorted(set(own) & set(state))
              if tuple(own[k].shape) != tuple(state[k].shape)]
    problems = []
    if strict and missing:
        problems.append(f'missing keys ({len(missing)}): {_list(missing)}')
    if strict and unexpected:
        problems.append(f'unexpected keys ({len(unexpected)}): {_list(unexpected)}')
    if shapes:
        problems.append(f'shape mismatches ({len(shapes)}): ' + '; '.join(shapes[:10]))
    if problems:
        raise ValueError(f'{path} does not fit {type(net).__name__}: ' + ' | '.join(problems))
    return missing, unexpected


def load_network_weights(net, path, param_key='params', strict=True):
    """Load BasicSR or official-format weights into ``net`` (a bare module, not DDP-wrapped).

    Args:
        net (nn.Module): Target network.
        path (str): Checkpoint file.
        param_key (str | None): Preferred key, e.g. 'params' or 'params_ema'.
        strict (bool): Require identical key sets.

    Returns:
        nn.Module: ``net``.

    Raises:
        ValueError: Listing missing / unexpected keys or mismatched shapes.
    """
    state = extract_state_dict(load_checkpoint_file(path), param_key, path)
    check_state_dict(net, state, path, strict)
    net.load_state_dict(state, strict=strict)
    return net


def infer_arch_from_state_dict(state):
    """Guess the network options of a MixDehazeNet-family state dict.

    Returns:
        dict: ``{'type', 'embed_dims', 'depths', 'num_cond'}`` (num_cond only for MixCLDehazeNet).
    """
    if 'patch_embed.proj.weight' not in state:
        raise ValueError('Not a MixDehazeNet-family state dict (no patch_embed.proj.weight).')
    depths = []
    for i in range(1, 6):
        idx = {int(m.group(1)) for k in state for m in [re.match(rf'layer{i}\.blocks\.(\d+)\.', k)] if m}
        depths.append(max(idx) + 1 if idx else 0)
    embed_dims = [int(state[f'layer{i}.blocks.0.conv1.weight'].shape[0]) if depths[i - 1] else 0 for i in range(1, 6)]
    opt = {'embed_dims': embed_dims, 'depths': depths}
    if 'text_emb.q1.weight' in state:
        extra = {int(m.group(1)) for k in state for m in [re.match(r'text_emb_extra\.(\d+)\.', k)] if m}
        opt.update(type='MixCLDehazeNet', num_cond=1 + len(extra))
    else:
        opt.update(type='MixDehazeNet')
    return opt
