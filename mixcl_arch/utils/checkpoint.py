"""Checkpoint I/O shared by the model, the scripts and the CLI.

Formats understood:
- BasicSR: ``{'params': state_dict}`` and/or ``{'params_ema': state_dict}``;
- the original MixDehazeNet / MixCLDehazeNet code: ``{'state_dict': {'module.xxx': ...}, 'optimizer': ...,
  'epoch': ..., 'best_psnr': ...}`` (saved from ``nn.DataParallel``, hence the ``module.`` prefix);
- a bare state dict (all values tensors);
- safetensors (recognised by its header, whatever the file name): a bare state dict, or one written by
  :func:`save_weights_file`, whose metadata ``mixcl_param_keys`` lists the keys (``params,params_ema``) and whose
  tensors are named ``<key>/<parameter name>``; it loads as the BasicSR dict.

Files written by this project's training also record what the weights are (:func:`network_meta`): a ``meta`` entry
``{'arch': 'MixCLDehazeNet', 'data_range': 'unit', 'network_g': {...}}`` beside ``params`` in ``.pth`` files, the
same dict as JSON under the safetensors metadata key ``mixcl_meta`` (it loads back as ``ckpt['meta']``). Loading the
weights ignores it (BasicSR's own ``load_network`` reads ``params`` only); :func:`read_checkpoint_meta` checks it and
the CLI uses it to rebuild the network without ``--opt``. Files without it (official, BasicSR, older) load as before.

Files are data, never code: ``.pth`` files are read with ``torch.load(weights_only=True)`` only. A legacy checkpoint
that needs full unpickling (e.g. one holding an ``argparse.Namespace``) loads only with ``allow_unsafe_pickle=True``
(``--allow-unsafe-pickle`` / ``path.allow_unsafe_pickle: true``), which warns: unpickling can run arbitrary code.
"""
import json
import math
import os
import re
import warnings
from collections import OrderedDict

import torch

from mixcl_arch.archs.mixdehazenet_arch import DATA_RANGES
from mixcl_arch.utils.file_io import atomic_torch_save, atomic_write_bytes

# tried in this order when no key is asked for (param_key=None, "auto")
PARAM_KEYS = ('params_ema', 'params', 'state_dict', 'model', 'net_g')
# keys under which a file that holds a single network stores it; ``params`` also names that network
SINGLE_NET_KEYS = ('state_dict', 'model', 'net_g')
SAVE_FORMATS = ('pth', 'safetensors')
OPT_IN_HINT = ('--allow-unsafe-pickle (CLI, convert_official_checkpoint.py), allow_unsafe_pickle=true (benchmark '
               'method parameter) or path.allow_unsafe_pickle: true (options YAML)')
_SAFETENSORS_KEYS = 'mixcl_param_keys'
_SAFETENSORS_META = 'mixcl_meta'
META_KEY = 'meta'


class CheckpointLoadError(ValueError):
    """A checkpoint that ``torch.load(weights_only=True)`` refuses or cannot read (and no unsafe-pickle opt-in)."""


class UnsafePickleWarning(UserWarning):
    """A checkpoint is being fully unpickled because the user opted in (``allow_unsafe_pickle``)."""


def error_reason(err):
    """'ExceptionType: first line of the message', for errors that name a file and why it does not load."""
    return f'{type(err).__name__}: {(str(err).strip().splitlines() or [""])[0]}'


def is_safetensors_file(path):
    """True when ``path`` starts like a safetensors file (8-byte little-endian header size, then a JSON object)."""
    with open(path, 'rb') as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b'{' and int.from_bytes(head[:8], 'little') < os.path.getsize(path)


def _load_safetensors(path):
    from safetensors import safe_open
    with safe_open(path, framework='pt', device='cpu') as f:
        meta = f.metadata() or {}
        tensors = {name: f.get_tensor(name) for name in f.keys()}
    if _SAFETENSORS_KEYS not in meta:
        return tensors
    ckpt = {}
    for key in meta[_SAFETENSORS_KEYS].split(','):
        prefix = key + '/'
        ckpt[key] = OrderedDict((n[len(prefix):], t) for n, t in tensors.items() if n.startswith(prefix))
    if _SAFETENSORS_META in meta:
        ckpt[META_KEY] = json.loads(meta[_SAFETENSORS_META])
    return ckpt


def load_checkpoint_file(path, allow_unsafe_pickle=False):
    """Load a checkpoint on CPU without running code from it.

    Args:
        path (str): A ``.pth``-style torch file or a safetensors file.
        allow_unsafe_pickle (bool): Fully unpickle a file that ``weights_only`` refuses (legacy checkpoints holding
            Python objects). Unpickling can execute arbitrary code: only for files you trust. Warns.

    Returns:
        dict | Tensor | ...: What the file holds (safetensors: see the module docstring).

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        CheckpointLoadError: The file does not load with ``weights_only=True`` and no opt-in was given.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f'Checkpoint file not found: {path}')
    if is_safetensors_file(path):
        try:
            return _load_safetensors(path)
        except Exception as err:  # truncated or malformed: safetensors' own errors, reported with the file
            raise CheckpointLoadError(f'{path}: not a readable safetensors file ({error_reason(err)}).') from err
    try:
        return torch.load(path, map_location='cpu', weights_only=True)
    except Exception as err:  # a refused global, a crafted payload (TypeError...) or a corrupt file alike
        reason = error_reason(err)
        if not allow_unsafe_pickle:
            raise CheckpointLoadError(
                f'{path} cannot be loaded as plain weights: torch.load(weights_only=True) refused it ({reason}). '
                'Weights files are never fully unpickled by default, because unpickling can execute arbitrary '
                'code. If this is a legacy checkpoint from a source you trust (e.g. it stores an '
                f'argparse.Namespace), opt in with {OPT_IN_HINT}; better, re-save it once as .safetensors.') from err
    warnings.warn(f'{path}: fully unpickling a checkpoint that weights_only=True refused ({reason}) because '
                  'allow_unsafe_pickle is set. Unpickling can execute arbitrary code: do this only with files you '
                  'trust.', UnsafePickleWarning, stacklevel=2)
    return torch.load(path, map_location='cpu', weights_only=False)


def save_weights_file(states, path, fmt='pth', meta=None):
    """Write networks' weights atomically as ``{param_key: state_dict}``.

    Args:
        states (dict[str, dict[str, Tensor]]): e.g. ``{'params': ..., 'params_ema': ...}``.
        path (str): Destination.
        fmt (str): 'pth' (``torch.save``) or 'safetensors' (tensors named ``<param_key>/<name>``, the keys in the
            metadata ``mixcl_param_keys``; :func:`load_checkpoint_file` restores the dict).
        meta (dict | None): What the weights are (:func:`network_meta`), stored as ``meta`` (pth) or as JSON in the
            safetensors metadata ``mixcl_meta``; None stores nothing.

    Raises:
        ValueError: Unknown ``fmt``, or a param key containing ',' or '/' or named ``meta``.
    """
    if fmt not in SAVE_FORMATS:
        raise ValueError(f'save format must be one of {SAVE_FORMATS}, got {fmt!r}.')
    if META_KEY in states:
        raise ValueError(f'{path}: {META_KEY!r} is reserved for the checkpoint metadata, not a param key.')
    if fmt == 'pth':
        atomic_torch_save(dict(states, **{META_KEY: meta}) if meta is not None else states, path)
        return
    from safetensors.torch import save
    bad = [k for k in states if ',' in k or '/' in k]
    if bad:
        raise ValueError(f'{path}: param keys {bad} cannot be stored in safetensors (no "," or "/").')
    # safetensors stores contiguous tensors that share no memory: copy each one
    tensors = {f'{key}/{name}': t.detach().to('cpu', copy=True).contiguous()
               for key, state in states.items() for name, t in state.items()}
    metadata = {_SAFETENSORS_KEYS: ','.join(states), 'format': 'pt'}
    if meta is not None:
        metadata[_SAFETENSORS_META] = json.dumps(meta)
    atomic_write_bytes(save(tensors, metadata=metadata), path)


def network_meta(net_opt, net):
    """The ``meta`` record of a checkpoint of ``net``: arch type, data range and the full ``network_g``.

    Args:
        net_opt (dict): The ``network_g`` options ``net`` was built from (``type`` and its arguments).
        net (nn.Module): The built network (a bare module); its ``data_range`` attribute, when it has one, is
            recorded, so a ``network_g`` that left it to the arch's default still records the value in use.

    Returns:
        dict: ``{'arch': str, 'data_range': 'unit' | 'signed' | None, 'network_g': dict}`` of plain JSON values.
    """
    data_range = getattr(net, 'data_range', None)
    network_g = json.loads(json.dumps(dict(net_opt)))  # plain dicts/lists, as torch's weights_only loader wants
    if data_range is not None:
        network_g['data_range'] = data_range
    return {'arch': str(net_opt['type']), 'data_range': data_range, 'network_g': network_g}


def read_checkpoint_meta(ckpt, path='<checkpoint>'):
    """The checked ``meta`` record of a loaded checkpoint (see :func:`network_meta`); {} for a file without one.

    Raises:
        ValueError: A ``meta`` entry that is not such a record, naming the file, the key and the value.
    """
    meta = ckpt.get(META_KEY) if isinstance(ckpt, dict) else None
    if meta is None:
        return {}
    if not isinstance(meta, dict):
        raise ValueError(f'{path}: {META_KEY!r} must be a mapping (arch, data_range, network_g), got {meta!r:.80}.')
    if meta.get('data_range') not in (None, *DATA_RANGES):
        raise ValueError(f'{path}: meta.data_range must be one of {DATA_RANGES}, got {meta["data_range"]!r}.')
    network_g = meta.get('network_g')
    if network_g is not None and not (isinstance(network_g, dict) and network_g.get('type') == meta.get('arch')):
        raise ValueError(f'{path}: meta.network_g must be a mapping whose type is meta.arch '
                         f'({meta.get("arch")!r}), got {network_g!r:.120}.')
    return meta


def saved_weights_path(path):
    """The file a training wrote for BasicSR's ``models/net_<x>_<iter>.pth`` name: that file, or its
    ``.safetensors`` twin when only the twin exists (``path.save_format: safetensors``)."""
    twin = os.path.splitext(path)[0] + '.safetensors'
    return twin if path.endswith('.pth') and not os.path.isfile(path) and os.path.isfile(twin) else path


def _keys_found(ckpt):
    return sorted(str(k) for k in ckpt)[:10]


def extract_state_dict(ckpt, param_key=None, path='<checkpoint>'):
    """Return the network state dict held in ``ckpt`` with any ``module.`` prefix removed.

    Args:
        ckpt (dict): What :func:`load_checkpoint_file` returned.
        param_key (str | None): The key to read (BasicSR's ``param_key_g``). None ("auto") tries ``params_ema``,
            ``params``, ``state_dict``, ``model``, ``net_g``, then a bare state dict. ``params`` also names the one
            network of a file that holds a single one (official ``state_dict``, ``model``, ``net_g``, bare state
            dict). Any other explicit key must be present: there is no fallback (``params_ema`` never silently
            loads ``params``).
        path (str): For error messages.

    Returns:
        OrderedDict[str, Tensor]

    Raises:
        ValueError: Not a dict, an explicit key that the file lacks (naming the keys present), or no weights.
    """
    if not isinstance(ckpt, dict):
        raise ValueError(f'{path}: expected a dict checkpoint, got {type(ckpt).__name__}.')
    if param_key == META_KEY:
        raise ValueError(f'{path}: {META_KEY!r} holds the checkpoint metadata, not weights; ask for a weights key.')
    bare = bool(ckpt) and all(isinstance(v, torch.Tensor) for v in ckpt.values())
    if param_key is None:
        keys = [k for k in PARAM_KEYS if isinstance(ckpt.get(k), dict)]
        if keys:
            state = ckpt[keys[0]]
        elif bare:
            state = ckpt
        else:
            raise ValueError(f'{path}: no network weights found; looked for keys {list(PARAM_KEYS)} and for a bare '
                             f'state dict. Top-level keys: {_keys_found(ckpt)}.')
    elif isinstance(ckpt.get(param_key), dict):
        state = ckpt[param_key]
    elif param_key == 'params' and not isinstance(ckpt.get('params_ema'), dict) and (
            bare or any(isinstance(ckpt.get(k), dict) for k in SINGLE_NET_KEYS)):
        state = ckpt if bare else next(ckpt[k] for k in SINGLE_NET_KEYS if isinstance(ckpt.get(k), dict))
    else:
        raise ValueError(f'{path} has no {param_key!r} weights (param_key / path.param_key_g: {param_key}); keys '
                         f'present: {_keys_found(ckpt)}. Ask for one of them, or leave the key unset (auto: '
                         f'{", ".join(PARAM_KEYS)}).')
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


def load_network_weights(net, path, param_key='params', strict=True, allow_unsafe_pickle=False):
    """Load BasicSR, official-format or safetensors weights into ``net`` (a bare module, not DDP-wrapped).

    Args:
        net (nn.Module): Target network.
        path (str): Checkpoint file.
        param_key (str | None): Key to read, e.g. 'params' or 'params_ema'; None: auto (see
            :func:`extract_state_dict`).
        strict (bool): Require identical key sets.
        allow_unsafe_pickle (bool): See :func:`load_checkpoint_file`.

    Returns:
        nn.Module: ``net``.

    Raises:
        ValueError: Listing missing / unexpected keys or mismatched shapes.
    """
    state = extract_state_dict(load_checkpoint_file(path, allow_unsafe_pickle), param_key, path)
    check_state_dict(net, state, path, strict)
    net.load_state_dict(state, strict=strict)
    return net


def infer_arch_from_state_dict(state):
    """Guess the network options of a MixDehazeNet-family state dict.

    Returns:
        dict: ``{'type', 'embed_dims', 'depths', 'num_cond'}`` (num_cond only for MixCLDehazeNet), plus the
        ``fusion`` variant's options (``fusion``, ``combine``, ``fusion_size``, ...) where they differ from the
        default. The parameter-free ``calip`` fusion is recognised only when concatenated (a wider patch embedding
        without ``text_emb`` keys); added to the image it leaves no trace and reads as a MixDehazeNet.
    """
    if 'patch_embed.proj.weight' not in state:
        raise ValueError('Not a MixDehazeNet-family state dict (no patch_embed.proj.weight).')
    depths = []
    for i in range(1, 6):
        idx = {int(m.group(1)) for k in state for m in [re.match(rf'layer{i}\.blocks\.(\d+)\.', k)] if m}
        depths.append(max(idx) + 1 if idx else 0)
    embed_dims = [int(state[f'layer{i}.blocks.0.conv1.weight'].shape[0]) if depths[i - 1] else 0 for i in range(1, 6)]
    opt = {'embed_dims': embed_dims, 'depths': depths}
    fusion = _infer_fusion(state, int(state['patch_embed.proj.weight'].shape[1]), embed_dims[0])
    if fusion is None:
        opt.update(type='MixDehazeNet')
    else:
        extra = {int(m.group(1)) for k in state for m in [re.match(r'text_emb_extra\.(\d+)\.', k)] if m}
        opt.update(type='MixCLDehazeNet', num_cond=1 + len(extra))
        opt.update(fusion)
    return opt


def _infer_fusion(state, embed_in, embed_dim, in_chans=3):
    """MixCLDehazeNet's non-default fusion options from the ``text_emb`` keys (mixcl_arch/archs/text_fusion.py).

    Args:
        state (dict): State dict.
        embed_in (int): Input channels of the patch embedding.
        embed_dim (int): Its output channels (embed_dims[0]).
        in_chans (int): Image channels.

    Returns:
        dict | None: Options beyond the default (empty for the default fusion; ``num_cond`` for calip, which has no
        ``text_emb_extra`` keys to count); None without any fusion.
    """
    q1 = state.get('text_emb.q1.weight')
    if q1 is not None and q1.dim() == 4:  # parametric (the reference model)
        return {} if embed_in > in_chans else {'combine': 'add'}
    if q1 is not None:  # parametric_linear: q1 is Linear(in_chans * size^2, text_dim)
        size = math.isqrt(q1.shape[1] // in_chans)
        return {'fusion': 'parametric_linear', 'combine': 'concat' if embed_in > in_chans else 'add',
                'fusion_size': size, 'text_dim': int(q1.shape[0]),
                'fusion_chans': int(state['text_emb.postProj_s.weight'].shape[0]) // size**2}
    if 'text_emb.proj.weight' in state:  # textemb: Linear(text_dim, embed_dim * size^2)
        rows, text_dim = state['text_emb.proj.weight'].shape
        return {'fusion': 'textemb', 'fusion_size': math.isqrt(rows // embed_dim), 'text_dim': int(text_dim)}
    if embed_in > in_chans:  # calip concatenated: no parameters, only the wider embedding tells (in_chans per vector)
        return {'fusion': 'calip', 'combine': 'concat', 'num_cond': (embed_in - in_chans) // in_chans}
    return None
