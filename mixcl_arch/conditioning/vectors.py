"""Prompt sets and the conditioning stack shared by the CLIP prior, the feature store and the dataset.

Conditioning of one image is a (K, E) stack: the primary vector first (the text feature of the domain prompt set,
``hard`` or ``soft``), then one vector per ``extra`` entry, in order:

* ``'image'``: the (L2-normalised) CLIP image embedding;
* ``'<set>'``: the text feature of the extra prompt set ``<set>`` (e.g. ``density``) in the primary mode;
* ``'<set>:hard'`` / ``'<set>:soft'``: the same with an explicit mode (``'domain:soft'`` is the primary set's soft
  vector, useful next to a hard primary vector).

Hard = the normalised text feature of the most probable class (the reference). Soft = ``probs @ class_text``, the
probability-weighted mean of the normalised class features (not re-normalised, so a confident prediction gives the
hard vector).
"""
import torch

__all__ = ['PRIMARY_SET', 'COND_MODES', 'normalize_prompt_sets', 'parse_extra', 'build_condition', 'hard_soft']

PRIMARY_SET = 'domain'
COND_MODES = ('hard', 'soft')
_RESERVED = (PRIMARY_SET, 'image')


def normalize_prompt_sets(prompt_sets, default_templates):
    """Canonical form of the ``prompt_sets`` option.

    Args:
        prompt_sets (dict | None): name -> list of class names, or name -> {'classes': [...], 'templates': [...]}.
        default_templates (list[str]): Templates for sets that give none.

    Returns:
        dict[str, dict]: name -> {'classes': list[str], 'templates': list[str]} (insertion order kept).

    Raises:
        ValueError: A reserved or malformed name, an empty class list, or a template without ``{}``.
    """
    out = {}
    for name, spec in (prompt_sets or {}).items():
        name = str(name)
        if name in _RESERVED or ':' in name or not name:
            raise ValueError(f'prompt_sets: invalid set name {name!r} (reserved: {_RESERVED}; no ":").')
        if isinstance(spec, dict):
            unknown = set(spec) - {'classes', 'templates'}
            if unknown:
                raise ValueError(f'prompt_sets.{name}: unknown keys {sorted(unknown)} (expected classes, templates).')
            classes, templates = spec.get('classes'), spec.get('templates') or default_templates
        else:
            classes, templates = spec, default_templates
        if isinstance(classes, str) or not classes:
            raise ValueError(f'prompt_sets.{name}: needs a non-empty list of class names, got {classes!r}.')
        out[name] = {'classes': [str(c) for c in classes],
                     'templates': check_templates(templates, f'prompt_sets.{name}')}
    return out


def check_templates(templates, where='templates'):
    """Validate prompt templates (a list of strings with one ``{}``); returns them as a list."""
    if isinstance(templates, str):
        templates = [templates]
    templates = [str(t) for t in (templates or [])]
    if not templates:
        raise ValueError(f'{where}: at least one prompt template is needed, e.g. "a photo of a {{}}".')
    bad = [t for t in templates if t.count('{}') != 1]
    if bad:
        raise ValueError(f'{where}: every template needs exactly one "{{}}" placeholder, got {bad}.')
    return templates


def parse_extra(extra, cond_mode='hard', set_names=()):
    """Parse ``extra`` entries into (kind, set_name, mode) triples.

    Args:
        extra (list[str]): Entries as described in the module docstring.
        cond_mode (str): Mode used for set entries without an explicit mode.
        set_names (Iterable[str] | None): Extra prompt sets that exist (None: do not check).

    Returns:
        list[tuple]: ('image', None, None) or ('text', set_name, mode); set_name 'domain' is the primary set.

    Raises:
        ValueError: Unknown set or mode.
    """
    if cond_mode not in COND_MODES:
        raise ValueError(f'mode must be one of {COND_MODES}, got {cond_mode!r}.')
    if isinstance(extra, str):
        extra = [extra]
    parsed = []
    for entry in extra or ():
        entry = str(entry)
        if entry == 'image':
            parsed.append(('image', None, None))
            continue
        name, _, mode = entry.partition(':')
        mode = mode or cond_mode
        if mode not in COND_MODES:
            raise ValueError(f'extra entry {entry!r}: mode must be one of {COND_MODES}.')
        if set_names is not None and name != PRIMARY_SET and name not in set_names:
            raise ValueError(f'extra entry {entry!r}: no prompt set {name!r} (available: '
                             f"'image', '{PRIMARY_SET}[:mode]'{''.join(f', {n!r}' for n in set_names)}).")
        parsed.append(('text', name, mode))
    return parsed


def hard_soft(probs, class_text):
    """Hard and soft text features from class probabilities.

    Args:
        probs (Tensor): (B, C) probabilities.
        class_text (Tensor): (C, E) normalised class text features.

    Returns:
        tuple[Tensor, Tensor]: hard (B, E) (row of the most probable class) and soft (B, E) (``probs @ class_text``).
    """
    class_text = class_text.to(probs.dtype)
    hard = class_text[probs.argmax(dim=-1)]
    soft = probs @ class_text
    return hard, soft


def _key(name, what):
    return what if name == PRIMARY_SET else f'{name}_{what}'


def build_condition(out, mode='hard', extra=()):
    """Stack the conditioning vectors of a batch.

    Args:
        out (dict): Output of :class:`~mixcl_arch.clip.prior.CLIPPrior` (or a feature store lookup): 'text_hard',
            'text_soft', 'image_emb' (B, E) and, per extra set, '<set>_text_hard' / '<set>_text_soft'.
        mode (str): 'hard' or 'soft' for the primary vector.
        extra (list[str]): Extra vectors (module docstring).

    Returns:
        Tensor: (B, K, E) with K = 1 + len(extra), primary vector first.

    Raises:
        ValueError: Bad mode / entry; KeyError-like ValueError when ``out`` lacks a requested vector.
    """
    vecs = []
    for kind, name, m in [('text', PRIMARY_SET, mode)] + parse_extra(extra, mode, set_names=None):
        key = 'image_emb' if kind == 'image' else _key(name, f'text_{m}')
        if key not in out:
            raise ValueError(f'Conditioning vector {key!r} is not available (have: {sorted(out)}); add the prompt set '
                             'to clip.prompt_sets and re-extract the feature store.')
        vecs.append(out[key])
    return torch.stack(vecs, dim=-2)
