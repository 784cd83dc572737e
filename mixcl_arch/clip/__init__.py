"""CLIP zero-shot prior, conditioning stacks and the feature store.

``CLIPPrior`` wraps any open_clip model (hub tag or local file, never a silent download); ``build_condition`` stacks
the conditioning vectors (primary text feature, extra prompt sets, image embedding); ``FeatureStore`` holds the
precomputed conditioning of a dataset with its provenance (written by ``scripts/extract_clip_features.py``).
"""
from mixcl_arch.conditioning.vectors import COND_MODES, PRIMARY_SET, build_condition, hard_soft, normalize_prompt_sets, parse_extra
from .prior import COND_OPTION_KEYS, LOGIT_SCALE, PRIOR_OPTION_KEYS, CLIPPrior
from .store import FeatureStore, load_domain_text_features, provenance_mismatches
from .weights import CLIPWeightsError, file_sha256, resolve_weights

__all__ = [
    'CLIPPrior', 'CLIPWeightsError', 'build_condition', 'FeatureStore', 'load_domain_text_features',
    'provenance_mismatches', 'resolve_weights', 'file_sha256', 'hard_soft', 'parse_extra', 'normalize_prompt_sets',
    'COND_MODES', 'PRIMARY_SET', 'LOGIT_SCALE', 'PRIOR_OPTION_KEYS', 'COND_OPTION_KEYS'
]
