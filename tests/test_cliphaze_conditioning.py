"""CLIPHaze's conditioning inputs (mixcl_arch/clip/cliphaze_cond.py): DCP and CLIP density maps, the embedding, the
feature store's spatial 'density' kind, scripts/extract_clip_features.py --density and how a stored map follows the
dataset's crop records (mixcl_arch.conditioning.kinds.apply_crop)."""
import csv
import json
import os
import random

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import mixcl_arch  # noqa: F401  (before basicsr)
from _train_helpers import load_script
from _clip_helpers import TINY_CFG, cliphaze_online, make_pairs, make_tiny_clip, tiny_clip_opt, write_img
from basicsr.data import build_dataset
from mixcl_arch.archs.cliphaze_arch import CLIPHazeNet
from mixcl_arch.clip.cliphaze_cond import (CLIPHazeCondConfig, crop_density, crop_grid, standin_provenance,
                                           to_store_resolution)
from mixcl_arch.clip.prior import CLIPPrior
from mixcl_arch.clip.store import FeatureStore
from mixcl_arch.conditioning.conditioner import CondBatch, StoreConditioner, build_conditioner
from mixcl_arch.conditioning.config import ConditioningConfig
from mixcl_arch.conditioning.kinds import apply_crop
from mixcl_arch.data.clip_data_util import standin_text_feature
from mixcl_arch.data.haze_synthesis import synthesize_haze

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_extract_script():
    return load_script('extract_clip_features')


@pytest.fixture(scope='module')
def prior(tmp_path_factory):
    path = make_tiny_clip(tmp_path_factory.mktemp('cliphaze_clip') / 'clip.pt')
    return CLIPPrior.from_opt(tiny_clip_opt(path))


def smooth_image(h, w, seed=0):
    rng = np.random.default_rng(seed)
    img = cv2.resize(rng.random((h // 8, w // 8, 3)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    return np.clip(img, 0, 1) * 0.8


def to_batch(img):
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))[None].float()


# ------------------------------------------------------------------------------------------------------ DCP route
def test_dcp_density_increases_with_beta():
    clear = smooth_image(48, 64)
    depth = np.repeat(np.linspace(1.0, 0.1, 48, dtype=np.float32)[:, None], 64, axis=1)  # top rows far
    cfg = CLIPHazeCondConfig(density_source='dcp', standin_domain='outdoor')
    means = []
    for beta in (0.25, 0.5, 1.0, 2.0, 3.0):
        hazy, _ = synthesize_haze(clear, depth, beta, 0.9)
        density, emb = cliphaze_online(None, to_batch(hazy), cfg)
        assert density.shape == (1, 1, 48, 64) and 0 <= float(density.min()) <= float(density.max()) <= 1
        means.append(float(density.mean()))
        assert torch.equal(emb[0], standin_text_feature('outdoor'))  # the demo's stand-in, not CLIP
    assert all(b > a + 0.05 for a, b in zip(means, means[1:])), means
    assert float(density[..., :12, :].mean()) > float(density[..., -12:, :].mean()) + 0.2  # far rows are hazier


# ----------------------------------------------------------------------------------------------------- CLIP route
def test_clip_route_runs_end_to_end_with_the_tiny_clip(prior):
    x = torch.stack([to_batch(smooth_image(40, 56, seed))[0] for seed in (1, 2)])
    cfg = {'crop': 32, 'stride': 16, 'short_side': 48, 'crop_batch': 4}
    density, emb = cliphaze_online(prior, x, cfg)
    assert density.shape == (2, 1, 40, 56) and density.dtype == torch.float32
    for d in density:  # min-max normalised per image
        assert float(d.min()) == pytest.approx(0, abs=1e-6) and float(d.max()) == pytest.approx(1, abs=1e-6)
    assert emb.shape == (2, 512) and torch.allclose(emb.norm(dim=1), torch.ones(2), atol=1e-5)
    assert torch.allclose(emb, prior(x)['image_emb'], atol=1e-6)  # the hazy input's CLIP image embedding
    raw, _ = cliphaze_online(prior, x, dict(cfg, normalize='none'))
    assert 0 < float(raw.min()) < float(raw.max()) < 1 and not torch.allclose(raw, density)
    with pytest.raises(ValueError, match='density_source: clip needs a CLIP prior'):
        cliphaze_online(None, x, cfg)


def test_overlap_averaging_equals_an_independent_computation(prior):
    assert crop_grid(24, 16, 8) == [0, 8] and crop_grid(40, 16, 8) == [0, 8, 16, 24]
    assert crop_grid(30, 16, 8) == [0, 8, 14] and crop_grid(16, 16, 8) == [0]
    x = to_batch(smooth_image(24, 40, seed=3))
    cfg = CLIPHazeCondConfig(crop=16, stride=8, short_side=None, normalize='none', crop_batch=3, logit_scale=50.0,
                             hazy_templates=('a foggy {}', 'a {} in haze'), clear_templates=('a clear {}', ),
                             scenes=('room', 'street'))
    density, _ = cliphaze_online(prior, x, cfg)

    def class_feature(templates):
        tokens = prior.tokenizer([t.format(s) for s in cfg.scenes for t in templates])
        f = F.normalize(prior.model.encode_text(tokens).float(), dim=-1).view(len(cfg.scenes), len(templates), -1)
        return F.normalize(F.normalize(f.mean(1), dim=-1).mean(0), dim=0)

    with torch.no_grad():
        text = torch.stack([class_feature(cfg.hazy_templates), class_feature(cfg.clear_templates)])
    acc, cnt = np.zeros((24, 40)), np.zeros((24, 40))
    for y in (0, 8):
        for x0 in (0, 8, 16, 24):
            emb = prior(x[:, :, y:y + 16, x0:x0 + 16])['image_emb'][0]
            p = float((50.0 * text @ emb).softmax(0)[0])
            for r in range(y, y + 16):
                for c in range(x0, x0 + 16):
                    acc[r, c] += p
                    cnt[r, c] += 1
    ref = torch.from_numpy(acc / cnt).float()
    assert torch.allclose(density[0, 0], ref, atol=1e-5)
    assert len(torch.unique(ref)) > 4  # the overlaps really average different crop scores


# ------------------------------------------------------------------------------------------ store and dataset
def standin_store(names, maps, domains=('indoor', 'outdoor'), cfg=None):
    cfg = cfg or CLIPHazeCondConfig(density_source='dcp', standin_domain='indoor')
    text = torch.stack([standin_text_feature(d) for d in domains])
    store = FeatureStore(standin_provenance(domains), {'domain': text}).add_spatial_kind('density', cfg.provenance())
    n = len(names)
    store.add(names, {'probs': torch.eye(len(domains))[[0] * n], 'image_emb': F.normalize(torch.randn(n, 512), dim=1)},
              spatial={'density': maps})
    return store


def store_conditioner(cliphaze_cond, store):
    """The conditioner of a run training CLIPHazeNet (density map and embedding) from the feature store ``store``."""
    cfg = ConditioningConfig.from_options({'conditioning': {'source': 'store'}, 'cliphaze_cond': cliphaze_cond})
    net = CLIPHazeNet(variant='T', cam='full')
    assert net.needs_density and net.needs_embedding
    return build_conditioner(cfg, net, stores=[store])


def conditioned(cond, items):
    batch = torch.utils.data.default_collate(items)
    return cond(CondBatch.from_data(batch, batch['lq'])), batch


def test_store_round_trip_density_follows_crop_flip_and_rotation(tmp_path):
    """The hazy image's channel 0 is a linear ramp (r + 2c) / 255 and the stored map is its 1/8 block mean, so the
    map cut by each item's crop record must equal the 8x8 block means of the same transform of the full-resolution
    ramp, and of the item's own 'lq' channel 0, whatever the crop offset (linear interpolation of a linear function
    is exact), flip or rotation: the map follows the image."""
    h, w = 40, 48
    rr, cc = np.mgrid[0:h, 0:w]
    names = ['a', 'b']
    lq_pattern = np.stack([rr + 2 * cc, rr * 6, cc * 5], axis=-1).astype(np.uint8)  # ch1 / ch2 reveal the offset
    for n in names:
        write_img(str(tmp_path / 'hazy' / f'{n}.png'), lq_pattern)
        write_img(str(tmp_path / 'GT' / f'{n}.png'), lq_pattern[::-1].copy())
    ramp = torch.from_numpy((rr + 2 * cc) / 255.0).float()[None]
    maps = [to_store_resolution(ramp[None], 8)[0]] * 2
    store = standin_store(names, maps)
    path = str(tmp_path / 'store.pt')
    store.save(path)
    back = FeatureStore.load(path)
    assert back.spatial_meta['density']['store_scale'] == 8 and back._spatial['density'][0].dtype == torch.float16
    assert torch.allclose(back.get_spatial('density', 1), maps[1], atol=1e-3)

    opt = {'name': 't', 'type': 'CLIPPairedImageDataset', 'phase': 'train', 'dataroot_lq': str(tmp_path / 'hazy'),
           'dataroot_gt': str(tmp_path / 'GT'), 'gt_size': 16, 'use_hflip': True, 'use_vflip': True, 'use_rot': True,
           'feature_store': path}
    ds = build_dataset(opt)
    random.seed(0)
    unaligned, flags = 0, set()
    for i in range(40):
        item = ds[i % 2]
        top, left, height, width, hflip, vflip, k = item['crop'].tolist()
        flags.add((hflip, vflip, k))
        unaligned += top % 8 != 0 or left % 8 != 0
        full = ramp[:, top:top + height, left:left + width]
        if hflip:
            full = full.flip(-1)
        if vflip:
            full = full.flip(-2)
        expect = F.avg_pool2d(torch.rot90(full, k, dims=(1, 2))[None], 8)[0]
        got = apply_crop(back.get_spatial('density', back.index[item['key']]), item['crop'], 8)
        assert got.shape == (1, 2, 2) and torch.allclose(got, expect, atol=2e-3), item['crop']
        assert torch.allclose(expect, F.avg_pool2d(item['lq'][None, :1], 8)[0], atol=1e-5)  # = the image's ramp
    assert unaligned > 20 and len(flags) > 8  # most crops start between two stored blocks; flips and turns drawn
    # the conditioner gives the same for a collated batch, and the store's embedding
    cond = store_conditioner({'density_source': 'dcp', 'standin_domain': 'indoor'}, path)
    assert isinstance(cond, StoreConditioner)
    out, batch = conditioned(cond, [ds[1], ds[0], ds[1]])
    assert set(out) == {'density', 'embedding'} and out['density'].shape == (3, 1, 2, 2)
    assert torch.allclose(out['density'], F.avg_pool2d(batch['lq'][:, :1], 8), atol=2e-3)
    assert torch.equal(out['embedding'][0], back.get('b')['image_emb'])
    # test phase: a fixed centre crop (offset 8, 12) and the full image
    test = build_dataset(dict(opt, phase='test', center_crop=24))
    out, batch = conditioned(cond, [test[0]])
    assert out['density'].shape == (1, 1, 3, 3) and batch['crop'][0].tolist() == [8, 12, 24, 24, 0, 0, 0]
    assert torch.allclose(out['density'], F.avg_pool2d(batch['lq'][:, :1], 8), atol=2e-3)
    out, _ = conditioned(cond, [build_dataset(dict(opt, phase='test'))[0]])
    assert torch.equal(out['density'][0], back.get_spatial('density', 0))


def test_crop_density_interpolates_between_blocks():
    dmap = torch.arange(12.0).view(1, 3, 4)
    assert torch.equal(crop_density(dmap, 8, 0, 16, 32, 8), dmap[:, 1:3])  # aligned: an exact slice
    half = crop_density(dmap, 4, 12, 16, 16, 8)  # half a block down, one and a half right
    assert torch.allclose(half, torch.tensor([[[3.5, 4.5], [7.5, 8.5]]]))


def write_meta_csv(root, names, domains):
    with open(os.path.join(root, 'meta.csv'), 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=['hazy', 'gt', 'domain'])
        writer.writeheader()
        writer.writerows({'hazy': f'{n}.png', 'gt': f'{n}.png', 'domain': d} for n, d in zip(names, domains))


def test_extract_dcp_standin_to_dataset_and_provenance_mismatch_rejected(tmp_path, capsys):
    root = str(tmp_path / 'data')
    names = make_pairs(root, n=3, size=(40, 48))
    write_meta_csv(root, names, ['indoor', 'outdoor', 'outdoor'])
    out = str(tmp_path / 'dcp.pt')
    mod = load_extract_script()
    base = ['--dataroot', os.path.join(root, 'hazy'), '--meta-file', os.path.join(root, 'meta.csv'), '--out', out,
            '--density', '--density-source', 'dcp', '--batch-size', '2', '--num-workers', '0', '--quiet']
    assert mod.main(base + ['--dcp-param', 'patch_radius=3']) == 0  # no CLIP weights given or needed
    summary = json.loads(capsys.readouterr().out.strip())
    assert summary['new'] == 3 and summary['density_source'] == 'dcp'
    store = FeatureStore.load(out)
    meta = store.spatial_meta['density']
    assert meta['density_source'] == 'dcp' and 'NOT CLIP' in meta['note'] and store.meta['model'] == 'standin'
    assert meta['dcp'] == {'patch_radius': '3'} and meta['store_scale'] == 8
    cfg = CLIPHazeCondConfig(density_source='dcp', dcp={'patch_radius': '3'})
    opt = {'name': 't', 'type': 'CLIPPairedImageDataset', 'phase': 'test', 'dataroot_lq': os.path.join(root, 'hazy'),
           'dataroot_gt': os.path.join(root, 'GT'), 'feature_store': out, 'meta_file': os.path.join(root, 'meta.csv')}
    cliphaze_cond = {'density_source': 'dcp', 'dcp': {'patch_radius': '3'}}
    ds = build_dataset(opt)
    cond = store_conditioner(cliphaze_cond, out)
    got, batch = conditioned(cond, [ds[0], ds[1]])
    online, _ = cliphaze_online(None, batch['lq'][1:], cfg, ['outdoor'])
    assert got['density'].shape == (2, 1, 5, 6) and batch['domain'] == ['indoor', 'outdoor']
    assert torch.allclose(got['density'][1:], to_store_resolution(online, 8), atol=1e-3)
    assert torch.equal(got['embedding'][1], standin_text_feature('outdoor'))  # the CSV label's stand-in
    assert torch.equal(got['embedding'][0], standin_text_feature('indoor'))

    with pytest.raises(ValueError, match="density_source: store 'dcp', options 'clip'"):
        store_conditioner({'density_source': 'clip'}, out)
    with pytest.raises(ValueError, match='store_scale: store 8, options 4'):
        store_conditioner(dict(cliphaze_cond, store_scale=4), out)
    train = build_dataset(dict(opt, phase='train', gt_size=12, use_hflip=True))
    random.seed(1)
    flipped = next(item for item in (train[0] for _ in range(50)) if item['crop'][4])
    with pytest.raises(ValueError, match='12x12 crop must be a multiple of the store scale 8'):  # cannot be mirrored
        conditioned(cond, [flipped])
    with pytest.raises(ValueError, match="other CLIP options.*dcp: store \\{'patch_radius': '3'\\}"):
        mod.main(base + ['--dcp-param', 'patch_radius=5'])  # resuming with other options
    plain = FeatureStore(store.meta, store.class_text)  # the same rows without density maps
    plain.add(names, store.get_rows(store.rows(names)))
    plain.save(str(tmp_path / 'plain.pt'))
    with pytest.raises(ValueError, match='has no density maps'):
        store_conditioner(cliphaze_cond, str(tmp_path / 'plain.pt'))


def test_extract_clip_route_stores_density_and_embedding(tmp_path, capsys):
    clip_file = make_tiny_clip(tmp_path / 'clip.pt')
    cfg_file = tmp_path / 'cfg.json'
    cfg_file.write_text(json.dumps(TINY_CFG))
    root = str(tmp_path / 'data')
    names = make_pairs(root, n=2, size=(24, 28))
    out = str(tmp_path / 'store.pt')
    mod = load_extract_script()
    assert mod.main(['--dataroot', os.path.join(root, 'hazy'), '--out', out, '--model', 'mixcl-tiny-clip',
                     '--model-cfg', str(cfg_file), '--pretrained', clip_file, '--device', 'cpu', '--quiet',
                     '--num-workers', '0', '--density', '--density-crop', '16', '--density-stride', '8',
                     '--density-short-side', '24', '--scene', 'room', '--density-scale', '4']) == 0
    assert json.loads(capsys.readouterr().out.strip())['density_source'] == 'clip'
    store = FeatureStore.load(out)
    meta = store.spatial_meta['density']
    assert meta['scenes'] == ['room'] and meta['crop'] == 16 and meta['embedding_source'] == 'clip'
    prior = CLIPPrior.from_opt(tiny_clip_opt(clip_file))
    img = cv2.imread(os.path.join(root, 'hazy', names[1] + '.png'))[..., ::-1] / 255.0
    cfg = CLIPHazeCondConfig(crop=16, stride=8, short_side=24, scenes=('room', ), store_scale=4)
    density, _ = cliphaze_online(prior, to_batch(img), cfg)
    stored = store.get_spatial('density', store.index[names[1]])
    assert stored.shape == (1, 6, 7) and torch.allclose(stored, to_store_resolution(density, 4)[0], atol=2e-3)


def test_options_are_validated_and_errors_name_the_key():
    with pytest.raises(ValueError, match="density_source must be one of \\('clip', 'dcp'\\), got 'sky'"):
        CLIPHazeCondConfig(density_source='sky')
    with pytest.raises(ValueError, match='stride \\(300\\) must not exceed crop'):
        CLIPHazeCondConfig(stride=300)
    with pytest.raises(ValueError, match='short_side must be null or an integer >= crop'):
        CLIPHazeCondConfig(short_side=100)
    with pytest.raises(ValueError, match="Unknown cliphaze_cond option\\(s\\) \\['crop_size'\\]"):
        CLIPHazeCondConfig.from_opt({'crop_size': 3})
    with pytest.raises(ValueError, match='hazy_templates.*exactly one'):
        CLIPHazeCondConfig(hazy_templates=('no placeholder', ))
    with pytest.raises(ValueError, match='cliphaze_cond.dcp: .*omega'):
        CLIPHazeCondConfig(density_source='dcp', dcp={'omega': 2})
    with pytest.raises(ValueError, match='embedding_source must be one of'):
        CLIPHazeCondConfig(embedding_source='daclip')
    with pytest.raises(ValueError, match='standin_domain'):
        cliphaze_online(None, torch.rand(1, 3, 16, 16), {'density_source': 'dcp'})
    store = standin_store(['a'], [torch.zeros(1, 2, 2)])
    with pytest.raises(ValueError, match='every kind of'):
        store.add(['b'], {'probs': torch.ones(1, 2), 'image_emb': torch.ones(1, 512)})
