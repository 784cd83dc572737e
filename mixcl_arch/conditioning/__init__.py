"""Conditioning: what a dehazing net gets besides the hazy image, from one config and one object.

Where it lives: :mod:`.config` parses the option file's top-level ``conditioning:`` / ``clip:`` / ``cliphaze_cond:``
sections once into a frozen :class:`~.config.ConditioningConfig`; :mod:`.kinds` says what each kind of input is (the
(B, K, E) vector stack of MixCLDehazeNet, CLIPHazeNet's density map and image embedding) and how each source makes
it; :mod:`.conditioner` has one :class:`~.conditioner.Conditioner` per source (online CLIP, feature store, oracle
label, fixed domain vector, none), built by :func:`~.conditioner.build_conditioner` for a net. :mod:`.vectors` holds
the vector-stack semantics (prompt sets, hard / soft, ``extra`` entries) shared with the CLIP prior and the store.

The training model, the inference restorers and ``scripts/extract_clip_features.py`` use these; datasets only serve
data (image keys, domain labels, crop records) and never read conditioning options.
"""
