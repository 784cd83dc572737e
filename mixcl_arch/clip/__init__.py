"""CLIP: the zero-shot prior (:mod:`.prior`, any open_clip model from a hub tag or a local file, never a silent
download), its weights (:mod:`.weights`), the feature store (:mod:`.store`, the precomputed conditioning of a dataset
with its provenance, written by ``scripts/extract_clip_features.py``) and CLIPHaze's density map and embedding
(:mod:`.cliphaze_cond`). How conditioning is configured and fed to a net: :mod:`mixcl_arch.conditioning`."""
