"""CLIP zero-shot prior and the feature store.

``CLIPPrior`` (:mod:`.prior`) wraps any open_clip model (hub tag or local file, never a silent download);
``FeatureStore`` (:mod:`.store`) holds the precomputed conditioning of a dataset with its provenance (written by
``scripts/extract_clip_features.py``); :mod:`.weights` resolves and checks weight files. How the conditioning vectors
are stacked (``build_condition``) lives in :mod:`mixcl_arch.conditioning.vectors`. New code imports from the defining
modules; the names below are the ones existing callers import from this package.
"""
from mixcl_arch.conditioning.vectors import build_condition
from .prior import CLIPPrior
from .store import FeatureStore, load_domain_text_features, provenance_mismatches
from .weights import CLIPWeightsError, resolve_weights

__all__ = [
    'CLIPPrior', 'CLIPWeightsError', 'build_condition', 'FeatureStore', 'load_domain_text_features',
    'provenance_mismatches', 'resolve_weights'
]
