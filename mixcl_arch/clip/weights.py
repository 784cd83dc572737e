"""Resolving CLIP weights (open_clip tag or local file) without ever hanging on the network.

* A local file is used as is: nothing touches the network.
* A tag (``openai``, ``laion2b_s34b_b79k``, ...) is looked up in the Hugging Face cache and in open_clip's URL cache
  (``~/.cache/clip``) first; a cached file is loaded as a file. Without a cache the network is probed once with a
  short timeout (DNS included); when it is unreachable, or ``HF_HUB_OFFLINE=1`` / ``MIXCL_CLIP_OFFLINE=1`` is set, or
  ``allow_download=False``, :class:`CLIPWeightsError` is raised at once, naming the file to get and the option to set.

A local or cached file never runs code: :func:`check_weights_file` reads a state-dict file with
``torch.load(weights_only=True)`` before open_clip does (open_clip retries a failed load with ``torch.load``'s default,
which unpickles on torch < 2.6 or with ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``). TorchScript archives (OpenAI's
``ViT-B-32.pt``) are code and load only with ``clip.torchscript: true``.
"""
import hashlib
import json
import os
import socket
import tempfile
import threading
import zipfile
from urllib.parse import urlparse

__all__ = ['CLIPWeightsError', 'ResolvedWeights', 'resolve_weights', 'register_model_cfg', 'file_sha256',
           'check_weights_file', 'PRETRAINED_OPTION_HINT']

PRETRAINED_OPTION_HINT = ('set `clip.pretrained: /path/to/file` in the options YAML, or pass `--pretrained FILE` to '
                          'scripts/extract_clip_features.py (`--clip-pretrained FILE` for python -m mixcl_arch.dehaze)')
TORCHSCRIPT_OPTION_HINT = '`clip.torchscript: true` in the options YAML (--clip-torchscript on the command line)'
SAFE_FORMAT_HINT = ('the open_clip state dict of the same weights, open_clip_model.safetensors or '
                    'open_clip_pytorch_model.bin on Hugging Face (ViT-B-32 openai: '
                    'https://huggingface.co/timm/vit_base_patch32_clip_224.openai), loads safely')
# suffixes open_clip reads without pickle: safetensors, and numpy (np.load with allow_pickle=False)
_NO_PICKLE_SUFFIXES = ('.safetensors', '.npz', '.npy')
_SHA_CACHE = {}
_CFG_DIR = None


class CLIPWeightsError(RuntimeError):
    """CLIP weights are missing or unusable (no download possible, missing file, unknown tag)."""


class ResolvedWeights:
    """Where the weights of one CLIP model come from.

    Attributes:
        kind (str): 'file' (a local file given by the user) or 'tag' (an open_clip tag, found in a cache or to be
            downloaded).
        path (str | None): The file to load (None: a tag that open_clip must download).
        tag (str | None): The open_clip tag, for kind 'tag'.
        tag_cfg (dict): open_clip's pretrained config of the tag ({} for a file).
    """

    def __init__(self, kind, path=None, tag=None, tag_cfg=None):
        self.kind = kind
        self.path = path
        self.tag = tag
        self.tag_cfg = dict(tag_cfg or {})

    def __repr__(self):
        return f'ResolvedWeights(kind={self.kind!r}, path={self.path!r}, tag={self.tag!r})'


def file_sha256(path, chunk=1 << 22):
    """sha256 hex digest of a file, cached per (path, size, mtime) for the process."""
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        h = hashlib.sha256()
        with open(path, 'rb') as f:
            for block in iter(lambda: f.read(chunk), b''):
                h.update(block)
        _SHA_CACHE[key] = h.hexdigest()
    return _SHA_CACHE[key]


def register_model_cfg(name, model_cfg):
    """Make ``model_cfg`` (open_clip's JSON model config as a dict) available to open_clip under ``name``.

    open_clip only reads configs from JSON files, so the dict is written to a per-process temporary folder and
    registered with :func:`open_clip.add_model_config`.

    Raises:
        ValueError: A config without embed_dim / vision_cfg / text_cfg, or a built-in name with a different config.
    """
    import open_clip
    from open_clip.factory import get_model_config

    global _CFG_DIR
    missing = [k for k in ('embed_dim', 'vision_cfg', 'text_cfg') if k not in (model_cfg or {})]
    if missing:
        raise ValueError(f'clip.model_cfg for {name!r} lacks {missing} (open_clip model configs need embed_dim, '
                         'vision_cfg and text_cfg).')
    known = get_model_config(name)
    if known is not None:
        if _canon(known) != _canon(model_cfg):
            raise ValueError(f'clip.model_cfg given for {name!r}, which is already an open_clip model with a '
                             'different config; give the custom config another name.')
        return
    if _CFG_DIR is None:
        _CFG_DIR = tempfile.mkdtemp(prefix='mixcl_open_clip_cfg_')
    path = os.path.join(_CFG_DIR, f'{name}.json')
    with open(path, 'w') as f:
        json.dump(model_cfg, f)
    open_clip.add_model_config(path)


def _zip_records(path):
    """Record names of a torch zip archive without its top folder ('archive/data.pkl' -> 'data.pkl'); [] if no zip."""
    if not zipfile.is_zipfile(path):
        return []
    with zipfile.ZipFile(path) as zf:
        return [n.split('/', 1)[1] for n in zf.namelist() if '/' in n]


def check_weights_file(path, torchscript=False):
    """Make sure open_clip can read the CLIP weights file ``path`` without running code from it.

    Without ``torchscript`` the file must be safetensors / numpy, or load with ``torch.load(weights_only=True)``
    (done here; open_clip then repeats that same load, so its unsafe retry is never reached). With ``torchscript``
    it must be a TorchScript archive (a ``constants.pkl`` record): ``torch.load`` then hands it to
    ``torch.jit.load`` and never to the pickle unpickler.

    Args:
        path (str): Weights file.
        torchscript (bool): The user asked for a TorchScript archive (``clip.torchscript: true``).

    Raises:
        CLIPWeightsError: A TorchScript or pickled file without the opt-in, or ``torchscript`` for another file;
            the message names the file, the reason and what to set.
    """
    import torch

    from mixcl_arch.utils.checkpoint import error_reason
    records = _zip_records(path)
    if torchscript:
        if 'constants.pkl' not in records:
            raise CLIPWeightsError(f'clip.torchscript is set but {path} is not a TorchScript archive (no constants.pkl '
                                   'record); remove clip.torchscript to load it as a state dict.')
        return
    if any(r == 'constants.pkl' or r.startswith('code/') for r in records):
        raise CLIPWeightsError(f'{path} looks like a TorchScript archive (such as OpenAI\'s ViT-B-32.pt). TorchScript '
                               f'is code, so it is loaded only when asked: set {TORCHSCRIPT_OPTION_HINT} for a file '
                               f'you trust; {SAFE_FORMAT_HINT}.')
    if path.lower().endswith(_NO_PICKLE_SUFFIXES):
        return
    try:
        # mmap: the pickle is checked, the tensor data is not read (zip archives only)
        torch.load(path, map_location='cpu', weights_only=True, mmap=bool(records))
    except Exception as err:  # a refused global, a crafted payload or a corrupt file alike
        raise CLIPWeightsError(f'CLIP weights {path} do not load with torch.load(weights_only=True) '
                               f'({error_reason(err)}); weights are never fully unpickled, as that can execute '
                               f'arbitrary code. A TorchScript archive needs {TORCHSCRIPT_OPTION_HINT}; otherwise '
                               f'{SAFE_FORMAT_HINT}.') from err


def _canon(cfg):
    return json.dumps(cfg, sort_keys=True, default=str)


def _looks_like_path(value):
    return (os.sep in value or '/' in value or value.startswith('.') or value.startswith('~')
            or value.lower().endswith(('.pt', '.pth', '.bin', '.safetensors', '.ckpt', '.npz')))


def _offline_env():
    return any(os.environ.get(k, '').strip().lower() in ('1', 'true', 'yes', 'on')
               for k in ('HF_HUB_OFFLINE', 'MIXCL_CLIP_OFFLINE', 'TRANSFORMERS_OFFLINE'))


def _reachable(host, timeout=3.0):
    """True if a TCP connection to host:443 opens within ``timeout`` s (DNS lookup included, via a thread)."""
    result = []

    def probe():
        try:
            with socket.create_connection((host, 443), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout + 0.5)
    return bool(result and result[0])


def _hf_cached(repo_and_file, cache_dir=None):
    """Path of a cached Hugging Face file for open_clip's ``org/repo/[filename]`` entry, or None."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    from open_clip.pretrained import HF_WEIGHTS_NAME, _get_safe_alternatives
    if repo_and_file.endswith('/'):
        repo_id, filename = repo_and_file.rstrip('/'), HF_WEIGHTS_NAME
    else:
        repo_id, filename = os.path.split(repo_and_file)
    for name in list(_get_safe_alternatives(filename)) + [filename]:
        try:
            found = try_to_load_from_cache(repo_id, name, cache_dir=cache_dir)
        except Exception:  # malformed cache: treat as absent
            found = None
        if isinstance(found, str) and os.path.isfile(found):
            return found
    return None


def _download_hint(model, tag_cfg):
    hints = []
    hub = tag_cfg.get('hf_hub', '')
    if hub:
        repo_id, filename = os.path.split(hub)
        repo_id = repo_id if filename else hub.rstrip('/')
        filename = filename or 'open_clip_pytorch_model.bin'
        hints.append(f'https://huggingface.co/{repo_id}/resolve/main/{filename}')
    if tag_cfg.get('url'):
        hints.append(tag_cfg['url'])
    return ' or '.join(hints) if hints else f'the weights of {model}'


def resolve_weights(model, pretrained, cache_dir=None, allow_download=True, probe_timeout=3.0):
    """Find the weights for ``model`` / ``pretrained`` without blocking on the network.

    Args:
        model (str): open_clip model name, e.g. 'ViT-B-32'.
        pretrained (str): open_clip tag ('openai') or path to a local checkpoint file.
        cache_dir (str | None): open_clip / Hugging Face cache folder (None: their defaults).
        allow_download (bool): Allow open_clip to download a tag that is not cached (only tried when the hub answers
            within ``probe_timeout`` and no offline variable is set).
        probe_timeout (float): Seconds for the connectivity probe.

    Returns:
        ResolvedWeights

    Raises:
        CLIPWeightsError: Missing file, unknown tag, or a tag that is neither cached nor downloadable now.
    """
    from open_clip.pretrained import get_pretrained_cfg, list_pretrained_tags_by_model

    if not pretrained:
        raise CLIPWeightsError(f'No CLIP weights given for {model!r}: {PRETRAINED_OPTION_HINT} (or an open_clip tag '
                               'such as `openai`). Random CLIP weights are never used silently.')
    pretrained = str(pretrained)
    expanded = os.path.expanduser(pretrained)
    if os.path.isfile(expanded):
        return ResolvedWeights('file', path=expanded)
    name = model.replace('/', '-')
    tag_cfg = get_pretrained_cfg(name, pretrained)
    if not tag_cfg:
        if _looks_like_path(pretrained):
            raise CLIPWeightsError(f'CLIP weights file not found: {expanded}. Download the checkpoint for {model!r} '
                                   f'and {PRETRAINED_OPTION_HINT}.')
        tags = list_pretrained_tags_by_model(name)
        raise CLIPWeightsError(f'{pretrained!r} is neither a file nor an open_clip tag of {model!r} (tags: '
                               f'{tags or "none: pass a local file"}); {PRETRAINED_OPTION_HINT}.')
    if 'file' in tag_cfg and os.path.isfile(tag_cfg['file']):
        return ResolvedWeights('tag', path=tag_cfg['file'], tag=pretrained, tag_cfg=tag_cfg)
    if tag_cfg.get('hf_hub'):
        found = _hf_cached(tag_cfg['hf_hub'], cache_dir)
        if found:
            return ResolvedWeights('tag', path=found, tag=pretrained, tag_cfg=tag_cfg)
    if tag_cfg.get('url'):
        url_cache = cache_dir or os.path.expanduser('~/.cache/clip')
        found = os.path.join(url_cache, os.path.basename(urlparse(tag_cfg['url']).path))
        if os.path.isfile(found):
            return ResolvedWeights('tag', path=found, tag=pretrained, tag_cfg=tag_cfg)
    hint = _download_hint(model, tag_cfg)
    why = None
    if not allow_download:
        why = 'downloads are disabled (allow_download: false)'
    elif _offline_env():
        why = 'an offline variable is set (HF_HUB_OFFLINE / MIXCL_CLIP_OFFLINE)'
    else:
        host = 'huggingface.co' if tag_cfg.get('hf_hub') else urlparse(tag_cfg.get('url', '')).hostname
        if not host or not _reachable(host, probe_timeout):
            why = f'{host or "the download server"} is unreachable (no network)'
    if why:
        raise CLIPWeightsError(f'CLIP weights for model {model!r}, pretrained={pretrained!r} are not cached and '
                               f'cannot be downloaded: {why}. Download {hint} and {PRETRAINED_OPTION_HINT}.')
    return ResolvedWeights('tag', path=None, tag=pretrained, tag_cfg=tag_cfg)
