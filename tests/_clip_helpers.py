"""Shared helpers for the CLIP tests: a tiny random open_clip model saved as a checkpoint file, tiny datasets."""
import csv
import os

import numpy as np

TINY_NAME = 'mixcl-tiny-clip'
TINY_CFG = {
    'embed_dim': 512,
    'vision_cfg': {'image_size': 32, 'layers': 1, 'width': 32, 'patch_size': 16, 'head_width': 16},
    'text_cfg': {'context_length': 77, 'vocab_size': 49408, 'width': 32, 'heads': 2, 'layers': 1},
}


def make_tiny_clip(path, seed=0):
    """Build the tiny open_clip model with random weights and save its state dict to ``path``."""
    import open_clip
    import torch

    from mixcl_arch.clip.weights import register_model_cfg
    register_model_cfg(TINY_NAME, TINY_CFG)
    torch.manual_seed(seed)
    model = open_clip.create_model(TINY_NAME, pretrained=None)
    torch.save({'state_dict': model.state_dict()}, path)
    return str(path)


def tiny_clip_opt(path, **kw):
    """YAML-like ``clip:`` options for the tiny model."""
    opt = {'model': TINY_NAME, 'pretrained': str(path), 'model_cfg': TINY_CFG, 'domains': ['indoor', 'outdoor'],
           'templates': ['a photo of a {}']}
    opt.update(kw)
    return opt


def write_img(path, img):
    import cv2
    os.makedirs(os.path.dirname(path), exist_ok=True)
    assert cv2.imwrite(str(path), img[..., ::-1].copy())


def make_pairs(root, n=4, size=(40, 48), ext='.png', gt_ext=None, seed=0, domains=('indoor', 'outdoor')):
    """DehazeFormer layout root/{hazy,GT} with identical names plus meta.csv; returns the names."""
    rng = np.random.default_rng(seed)
    names = []
    rows = []
    for i in range(n):
        name = f'img_{i:03d}'
        gt = rng.integers(0, 256, (size[0], size[1], 3), dtype=np.uint8)
        hazy = (gt * 0.5 + 100).astype(np.uint8)
        write_img(os.path.join(root, 'hazy', name + ext), hazy)
        write_img(os.path.join(root, 'GT', name + (gt_ext or ext)), gt)
        names.append(name)
        rows.append({'hazy': name + ext, 'gt': name + (gt_ext or ext), 'domain': domains[i % len(domains)],
                     'beta': 1.0, 'A': 0.8, 'depth_source': 'none'})
    with open(os.path.join(root, 'meta.csv'), 'w', newline='') as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return names


def cliphaze_online(prior, x, cfg, domains=None):
    """CLIPHaze's density map and embedding of ``x`` as the online conditioner computes them (its kinds).

    Args:
        prior (CLIPPrior | None): None for the DCP stand-in with the stand-in embedding.
        x (Tensor): (B, 3, H, W) in [0, 1].
        cfg (CLIPHazeCondConfig | dict): ``cliphaze_cond`` options.
        domains (list[str] | None): Per-image domain labels (stand-in embedding).

    Returns:
        tuple[Tensor, Tensor]: density (B, 1, H, W), embedding (B, E).
    """
    from mixcl_arch.clip.cliphaze_cond import CLIPHazeCondConfig
    from mixcl_arch.conditioning.conditioner import CondBatch
    from mixcl_arch.conditioning.config import ConditioningConfig
    from mixcl_arch.conditioning.kinds import Density, Embedding
    cfg = ConditioningConfig(cliphaze=cfg if isinstance(cfg, CLIPHazeCondConfig) else CLIPHazeCondConfig.from_opt(cfg))
    batch = CondBatch(x, domains=None if domains is None else tuple(domains))
    return Density().online(prior, batch, cfg), Embedding().online(prior, batch, cfg)
