"""The frozen CLIP zero-shot prior (any open_clip model, hub tag or local weights)."""
import logging
import os

import torch

from mixcl_arch.utils.device import resolve_device

from mixcl_arch.conditioning.vectors import PRIMARY_SET, check_templates, hard_soft, normalize_prompt_sets
from .weights import CLIPWeightsError, check_weights_file, file_sha256, register_model_cfg, resolve_weights

__all__ = ['CLIPPrior', 'LOGIT_SCALE', 'PRIOR_OPTION_KEYS']

LOGIT_SCALE = 100.0  # softmax(100 * cosine), as the reference's clip_text.py
PRIOR_OPTION_KEYS = ('model', 'pretrained', 'device', 'dtype', 'domains', 'templates', 'prompt_sets', 'model_cfg',
                     'quick_gelu', 'cache_dir', 'allow_download', 'torchscript')
_PRECISIONS = {'fp32': 'fp32', 'fp16': 'fp16', 'bf16': 'bf16', 'float32': 'fp32', 'float16': 'fp16',
               'bfloat16': 'bf16'}
logger = logging.getLogger('mixcl_arch')


class CLIPPrior:
    """Frozen open_clip model that classifies images into domains zero-shot and returns conditioning vectors.

    Text features are computed once per prompt set at construction and kept (class feature = L2-normalised mean over
    templates of the L2-normalised text embeddings; with one template, the reference's feature exactly).

    Args:
        model (str): open_clip model name (``ViT-B-32``, ``RN50``, ...) or the name of ``model_cfg``.
        pretrained (str): open_clip tag (``openai``) or a local checkpoint file (open_clip state dict or
            safetensors, loaded without running code; the original OpenAI TorchScript file with ``torchscript``).
        device (str): 'cpu', 'cuda', 'cuda:1' or 'auto'.
        dtype (str): 'fp32', 'fp16' or 'bf16' (open_clip precision).
        domains (Sequence[str]): Primary classes. Default: ('indoor', 'outdoor') as the reference.
        templates (Sequence[str]): Prompt templates with one ``{}``. Default: ('a photo of a {}',).
        prompt_sets (dict | None): Extra prompt sets, name -> class list or {'classes': [...], 'templates': [...]},
            e.g. ``{'density': ['thin haze', 'moderate haze', 'dense haze']}``.
        model_cfg (dict | None): open_clip model config (embed_dim, vision_cfg, text_cfg) for a non-built-in model.
        quick_gelu (bool | None): Force QuickGELU. None: the tag's setting; for a file, True for a TorchScript
            (OpenAI) file and the model config's setting otherwise (use ``ViT-B-32-quickgelu`` or ``quick_gelu: true``
            for OpenAI weights saved as a state dict).
        torchscript (bool): The weights file is a TorchScript archive (OpenAI's ``ViT-B-32.pt``). TorchScript is
            code, so such a file is refused unless this is set; without it every file must load with
            ``weights_only=True`` (see :func:`mixcl_arch.clip.weights.check_weights_file`).
        cache_dir (str | None): open_clip / Hugging Face cache folder.
        allow_download (bool): Let open_clip download a tag that is not cached (only when the hub is reachable).

    Raises:
        CLIPWeightsError: Missing weights (see :func:`mixcl_arch.clip.weights.resolve_weights`).
        ValueError: Bad options.
    """

    def __init__(self, model='ViT-B-32', pretrained='openai', device='cpu', dtype='fp32', domains=('indoor', 'outdoor'),
                 templates=('a photo of a {}', ), prompt_sets=None, model_cfg=None, quick_gelu=None, cache_dir=None,
                 allow_download=True, torchscript=False):
        import open_clip

        if dtype not in _PRECISIONS:
            raise ValueError(f'clip.dtype must be one of {sorted(_PRECISIONS)}, got {dtype!r}.')
        self.device = resolve_device(device)
        self.precision = _PRECISIONS[dtype]
        if self.precision == 'fp16' and self.device.type == 'cpu':
            raise ValueError('clip.dtype fp16 needs a CUDA device; use fp32 or bf16 on CPU.')
        self.domains = [str(d) for d in (domains or [])]
        if len(self.domains) < 2 or len(set(self.domains)) != len(self.domains):
            raise ValueError(f'clip.domains needs at least two distinct class names, got {self.domains}.')
        self.templates = check_templates(templates, 'clip.templates')
        self.prompt_sets = normalize_prompt_sets(prompt_sets, self.templates)
        self.model_name = str(model).replace('/', '-')
        self.model_cfg = model_cfg
        if model_cfg is not None:
            register_model_cfg(self.model_name, model_cfg)
        elif open_clip.get_model_config(self.model_name) is None:
            raise ValueError(f'Unknown open_clip model {model!r}; give its config as clip.model_cfg, or one of '
                             f'{open_clip.list_models()[:12]}...')

        if not isinstance(torchscript, bool):
            raise ValueError(f'clip.torchscript must be true or false, got {torchscript!r}.')
        weights = resolve_weights(self.model_name, pretrained, cache_dir=cache_dir, allow_download=allow_download)
        if weights.path:
            check_weights_file(weights.path, torchscript)
        elif torchscript:
            raise CLIPWeightsError(f'clip.torchscript is set but {pretrained!r} is not a local file; it applies to a '
                                   'TorchScript weights file only.')
        kwargs = dict(precision=self.precision, device=self.device, cache_dir=cache_dir)
        if quick_gelu is None:
            quick_gelu = bool(weights.tag_cfg.get('quick_gelu', False)) or torchscript
        if quick_gelu:
            kwargs['force_quick_gelu'] = True
        if weights.tag_cfg:
            kwargs['force_preprocess_cfg'] = {k: weights.tag_cfg[k] for k in
                                              ('mean', 'std', 'interpolation', 'resize_mode') if k in weights.tag_cfg}
        if torchscript:
            logger.warning(f'Loading the TorchScript archive {weights.path} (clip.torchscript: true): TorchScript is '
                           'code; load only files you trust.')
            # torch.load passes a zip with constants.pkl (checked above) to torch.jit.load, never to pickle
            kwargs['weights_only'] = False
        source = weights.path if weights.path else weights.tag
        try:
            net, _, preprocess = open_clip.create_model_and_transforms(self.model_name, pretrained=source, **kwargs)
        except CLIPWeightsError:
            raise
        except Exception as err:  # open_clip raises RuntimeError/KeyError/... for bad or foreign checkpoints
            hint = (f'file {weights.path}' if weights.path else f'tag {weights.tag!r}')
            raise CLIPWeightsError(f'Could not load CLIP {self.model_name!r} weights from {hint}: {err}') from err
        self.model = net.eval().requires_grad_(False)
        self.preprocess = preprocess
        self.tokenizer = open_clip.get_tokenizer(self.model_name)
        self.pretrained = str(pretrained)
        self.weights_kind = weights.kind
        self.pretrained_sha256 = file_sha256(weights.path) if weights.kind == 'file' else None
        self.quick_gelu = bool(quick_gelu)
        self._init_text()

    @classmethod
    def from_model(cls, model, preprocess, tokenizer, model_name, domains=('indoor', 'outdoor'),
                   templates=('a photo of a {}', ), prompt_sets=None, device='cpu'):
        """Wrap an open_clip model that is already built (benchmarks, notebooks); provenance says 'in-memory'.

        Args:
            model (nn.Module): open_clip CLIP model.
            preprocess (Callable): Its eval transform.
            tokenizer (Callable): Its tokenizer.
            model_name (str): Name recorded in the provenance.
        """
        self = cls.__new__(cls)
        self.device = resolve_device(device)
        self.precision = 'fp32'
        self.domains = [str(d) for d in domains]
        self.templates = check_templates(templates, 'templates')
        self.prompt_sets = normalize_prompt_sets(prompt_sets, self.templates)
        self.model_name, self.model_cfg = model_name, None
        self.model = model.to(self.device).eval().requires_grad_(False)
        self.preprocess, self.tokenizer = preprocess, tokenizer
        self.pretrained, self.weights_kind = '<in-memory>', 'memory'
        self.pretrained_sha256, self.quick_gelu = None, None
        self._init_text()
        return self

    @classmethod
    def from_opt(cls, opt):
        """Build from the YAML ``clip:`` section.

        Args:
            opt (ClipOptions | dict | None): The parsed section (``ConditioningConfig.clip``) or the raw mapping, whose
                keys must be :data:`PRIOR_OPTION_KEYS` (``~`` values keep the defaults).

        Raises:
            mixcl_arch.utils.options.OptionError: An unknown key, named as ``clip.<key>``.
        """
        from mixcl_arch.conditioning.config import ClipOptions  # lazy: the config module imports this one
        if not isinstance(opt, ClipOptions):
            opt = ClipOptions.from_dict(opt)
        return cls(**opt.as_dict())

    # ------------------------------------------------------------------------------------------------ text side
    @torch.no_grad()
    def encode_classes(self, classes, templates):
        """Normalised class text features.

        Args:
            classes (list[str]): C class names.
            templates (list[str]): T templates with ``{}``.

        Returns:
            Tensor: (C, E) float32 on ``self.device``, L2-normalised (mean over templates, re-normalised).
        """
        prompts = [t.format(c) for c in classes for t in templates]
        tokens = self.tokenizer(prompts).to(self.device)
        feats = self.model.encode_text(tokens).float()
        feats = feats / feats.norm(dim=-1, keepdim=True)
        feats = feats.view(len(classes), len(templates), -1).mean(dim=1)
        return feats / feats.norm(dim=-1, keepdim=True)

    def _init_text(self):
        self.class_text = {PRIMARY_SET: self.encode_classes(self.domains, self.templates)}
        for name, spec in self.prompt_sets.items():
            self.class_text[name] = self.encode_classes(spec['classes'], spec['templates'])
        self.embed_dim = int(self.class_text[PRIMARY_SET].shape[1])

    @property
    def domain_text(self):
        """Tensor: (D, E) normalised text feature of each domain (order of ``domains``)."""
        return self.class_text[PRIMARY_SET]

    def provenance(self):
        """dict: what a feature store records to be checked against the options later."""
        import open_clip
        return {
            'model': self.model_name,
            'pretrained': self.pretrained if self.weights_kind == 'tag' else os.path.basename(self.pretrained),
            'pretrained_kind': self.weights_kind,
            'pretrained_sha256': self.pretrained_sha256,
            'quick_gelu': self.quick_gelu,
            'model_cfg': self.model_cfg,
            'domains': list(self.domains),
            'templates': list(self.templates),
            'prompt_sets': {k: {'classes': list(v['classes']), 'templates': list(v['templates'])}
                            for k, v in self.prompt_sets.items()},
            'embed_dim': self.embed_dim,
            'logit_scale': LOGIT_SCALE,
            'open_clip_version': getattr(open_clip, '__version__', 'unknown'),
        }

    # ----------------------------------------------------------------------------------------------- image side
    @torch.no_grad()
    def from_pixels(self, pixels):
        """Zero-shot outputs for images already preprocessed with ``self.preprocess``.

        Args:
            pixels (Tensor): (B, 3, S, S) normalised CLIP input.

        Returns:
            dict[str, Tensor]: float32 on ``self.device``: 'probs' (B, D), 'pred' (B,) long, 'text_hard' (B, E),
            'text_soft' (B, E), 'image_emb' (B, E) (L2-normalised); per extra set '<set>_probs' (B, C),
            '<set>_text_hard', '<set>_text_soft' (B, E).
        """
        dtype = next(self.model.parameters()).dtype
        img = self.model.encode_image(pixels.to(self.device, dtype)).float()
        img = img / img.norm(dim=-1, keepdim=True)
        out = {'image_emb': img}
        for name, text in self.class_text.items():
            probs = (LOGIT_SCALE * img @ text.T).softmax(dim=-1)
            hard, soft = hard_soft(probs, text)
            prefix = '' if name == PRIMARY_SET else f'{name}_'
            out[f'{prefix}probs'], out[f'{prefix}text_hard'], out[f'{prefix}text_soft'] = probs, hard, soft
        out['pred'] = out['probs'].argmax(dim=-1)
        return out

    def preprocess_tensor(self, x):
        """open_clip's own eval transform applied to a batch tensor.

        open_clip's transform (Resize, CenterCrop, MaybeConvertMode, MaybeToTensor, Normalize) accepts tensors; it
        is applied as is (tensor resize uses antialiasing; it matches the PIL path to ~1e-2, see the tests).

        Args:
            x (Tensor): (B, 3, H, W) or (3, H, W) float in [0, 1].

        Returns:
            Tensor: (B, 3, S, S) float32.
        """
        if x.dim() == 3:
            x = x[None]
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f'CLIPPrior expects (B, 3, H, W) images in [0, 1], got shape {tuple(x.shape)}.')
        return self.preprocess(x.float().clamp(0, 1))

    def __call__(self, x):
        """Zero-shot outputs for (B, 3, H, W) float images in [0, 1]; see :meth:`from_pixels`."""
        return self.from_pixels(self.preprocess_tensor(x.to(self.device)))

    def __repr__(self):
        return (f'CLIPPrior(model={self.model_name!r}, pretrained={self.pretrained!r}, device={self.device}, '
                f'domains={self.domains}, templates={self.templates}, prompt_sets={list(self.prompt_sets)})')
