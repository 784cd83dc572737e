"""CLIPPairedImageDataset built from YAML dicts on tiny generated data (folder, RESIDE naming, meta CSV, LMDB)."""
import copy
import csv
import os

import numpy as np
import pytest
import torch
import yaml
from torch.utils.data import DataLoader

import mixcl_arch  # noqa: F401  (before basicsr)
from _clip_helpers import make_pairs, make_tiny_clip, tiny_clip_opt, write_img
from basicsr.data import build_dataset
from mixcl_arch.clip import CLIPPrior, FeatureStore
from mixcl_arch.data.clip_data_util import standin_text_feature

BASE = """
name: tiny
type: CLIPPairedImageDataset
phase: train
dataroot_lq: ~
dataroot_gt: ~
io_backend: {type: disk}
gt_size: 16
use_hflip: true
use_rot: false
"""


def ds_opt(root, **kw):
    opt = yaml.safe_load(BASE)
    opt.update(dataroot_lq=os.path.join(root, 'hazy'), dataroot_gt=os.path.join(root, 'GT'))
    opt.update(kw)
    return opt


@pytest.fixture(scope='module')
def world(tmp_path_factory):
    """Tiny CLIP, a 6-pair folder dataset with meta.csv, its feature store (with a prompt set) and its LMDBs."""
    tmp = tmp_path_factory.mktemp('clipds')
    clip_file = make_tiny_clip(tmp / 'clip.pt')
    root = str(tmp / 'data')
    names = make_pairs(root, n=6, size=(24, 28))
    copt = tiny_clip_opt(clip_file, prompt_sets={'density': ['thin haze', 'dense haze']})
    prior = CLIPPrior.from_opt(copt)
    store = FeatureStore.from_prior(prior)
    imgs = torch.stack([torch.from_numpy(__import__('cv2').imread(os.path.join(root, 'hazy', n + '.png'))[..., ::-1]
                                         .copy()).permute(2, 0, 1).float() / 255 for n in names])
    store.add(names, prior(imgs))
    store_path = str(tmp / 'store.pt')
    store.save(store_path)
    from basicsr.utils.lmdb_util import make_lmdb_from_imgs
    for sub in ('hazy', 'GT'):
        make_lmdb_from_imgs(os.path.join(root, sub), os.path.join(root, f'{sub}.lmdb'), [n + '.png' for n in names],
                            names, multiprocessing_read=False)
    return dict(tmp=tmp, root=root, names=names, clip=copt, store=store_path, prior=prior, store_obj=store)


def test_folder_train_items_and_store_conditioning(world):
    ds = build_dataset(ds_opt(world['root'], feature_store=world['store'], cond_source='store', clip=world['clip']))
    assert len(ds) == 6
    item = ds[2]
    assert item['lq'].shape == item['gt'].shape == (3, 16, 16) and item['lq'].dtype == torch.float32
    assert 0 <= float(item['lq'].min()) and float(item['lq'].max()) <= 1
    ref = world['store_obj'].get(world['names'][2])
    assert torch.equal(item['text'], ref['text_hard']) and torch.equal(item['domain_prob'], ref['probs'])
    assert item['cond'].shape == (1, 512) and torch.equal(item['cond'][0], item['text'])
    assert item['lq_path'].endswith('img_002.png') and item['gt_path'].endswith(os.path.join('GT', 'img_002.png'))
    # hazy = 0.5 * gt + 100/255 at the same crop: the crop is paired
    assert torch.allclose(item['lq'], torch.floor(item['gt'] * 255 * 0.5 + 100) / 255, atol=1.01 / 255)


def test_soft_mode_and_extra_vectors(world):
    ds = build_dataset(ds_opt(world['root'], feature_store=world['store'], cond_mode='soft',
                              cond_extra=['image', 'density', 'domain:hard']))
    item = ds[1]
    ref = world['store_obj'].get(world['names'][1])
    assert item['cond'].shape == (4, 512)
    for k, key in enumerate(['text_soft', 'image_emb', 'density_text_soft', 'text_hard']):
        assert torch.equal(item['cond'][k], ref[key]), key
    with pytest.raises(ValueError, match='weather'):
        build_dataset(ds_opt(world['root'], feature_store=world['store'], cond_extra=['weather']))


def test_dataloader_with_two_workers(world):
    ds = build_dataset(ds_opt(world['root'], feature_store=world['store'], cond_extra=['image']))
    loader = DataLoader(ds, batch_size=3, num_workers=2, shuffle=False)
    batches = list(loader)
    assert len(batches) == 2
    b = batches[0]
    assert b['lq'].shape == (3, 3, 16, 16) and b['cond'].shape == (3, 2, 512) and b['text'].shape == (3, 512)
    assert b['domain_prob'].shape == (3, 2)
    assert torch.equal(b['cond'][:, 1], world['store_obj'].get_rows(torch.arange(3))['image_emb'])


def test_test_mode_full_and_center_crop(world):
    full = build_dataset(ds_opt(world['root'], phase='val'))
    assert full[0]['lq'].shape == (3, 24, 28) and 'cond' not in full[0]
    cc = build_dataset(ds_opt(world['root'], phase='val', center_crop=10))
    assert cc[0]['lq'].shape == (3, 10, 10)
    assert torch.equal(cc[0]['lq'], full[0]['lq'][:, 7:17, 9:19])
    lq_only = build_dataset(ds_opt(world['root'], phase='val', dataroot_gt=None))
    assert 'gt' not in lq_only[0] and len(lq_only) == 6


def test_augmentations_flip_and_rotate_pairs(world, monkeypatch):
    opt = ds_opt(world['root'], phase='val')
    base = build_dataset(opt)[0]
    ds = build_dataset(ds_opt(world['root'], gt_size=24, use_hflip=True, use_vflip=True, use_rot=True))
    import random
    seen = set()
    for s in range(30):
        random.seed(s)
        item = ds[0]
        lq, gt = item['lq'], item['gt']
        assert lq.shape == (3, 24, 24)
        # lq and gt got the same transform: the haze relation holds pixel-wise
        assert torch.allclose(lq, torch.floor(gt * 255 * 0.5 + 100) / 255, atol=1.01 / 255)
        seen.add(lq.numpy().tobytes())
    assert len(seen) > 4
    _ = base


def test_edge_decay_prefers_borders():
    import random

    from mixcl_arch.data.clip_data_util import random_crop_pair
    img = np.arange(100 * 100, dtype=np.float32).reshape(100, 100, 1)
    rng = random.Random(0)
    starts = [int(random_crop_pair(img, None, 20, edge_decay=1.0, rng=rng)[0][0, 0, 0]) // 100 for _ in range(400)]
    border = np.mean([s in (0, 80) for s in starts])
    assert border > 0.15  # ~ 20/100 + uniform share; without edge decay ~ 2/81
    rng = random.Random(0)
    starts = [int(random_crop_pair(img, None, 20, rng=rng)[0][0, 0, 0]) // 100 for _ in range(400)]
    assert np.mean([s in (0, 80) for s in starts]) < 0.08


def test_reside_naming_many_hazy_to_one_gt(tmp_path):
    rng = np.random.default_rng(0)
    gt1, gt2 = (rng.integers(0, 256, (20, 20, 3), dtype=np.uint8) for _ in range(2))
    write_img(tmp_path / 'its' / 'GT' / '1.png', gt1)
    write_img(tmp_path / 'its' / 'GT' / '2.png', gt2)
    for name, gt in (('1_1_0.90179', gt1), ('1_2_0.8', gt1), ('2_1_0.7', gt2)):
        write_img(tmp_path / 'its' / 'hazy' / f'{name}.png', gt // 2)
    ds = build_dataset(ds_opt(str(tmp_path / 'its'), phase='val', gt_name_rule='reside_its'))
    assert [os.path.basename(p) for _, p in ds.pairs] == ['1.png', '1.png', '2.png']
    # OTS: jpg hazy in a sub-folder, GT at the root with another extension; custom regex does the same
    write_img(tmp_path / 'ots' / 'GT' / '0025.png', gt1)
    write_img(tmp_path / 'ots' / 'hazy' / 'part1' / '0025_0.8_0.1.jpg', gt1 // 2)
    for kw in ({'gt_name_rule': 'reside_ots'}, {'gt_name_regex': r'^(\d+)_.*$', 'gt_name_repl': r'\1'}):
        ds = build_dataset(ds_opt(str(tmp_path / 'ots'), phase='val', **kw))
        assert ds.pairs == [('part1/0025_0.8_0.1.jpg', '0025.png')] and ds.keys == ['part1/0025_0.8_0.1']
        assert ds[0]['gt'].shape == (3, 20, 20)
    with pytest.raises(ValueError, match=r'1 of 1 hazy image\(s\).*no GT.*0025_0.8_0.1'):
        build_dataset(ds_opt(str(tmp_path / 'ots'), phase='val'))  # identity rule: no GT named like the hazy file
    with pytest.raises(ValueError, match='gt_name_rule'):
        build_dataset(ds_opt(str(tmp_path / 'ots'), phase='val', gt_name_rule='nyu'))


def test_meta_csv_pairs_and_oracle(world, tmp_path):
    root = world['root']
    opt = ds_opt(root, meta_file=os.path.join(root, 'meta.csv'), cond_source='oracle', feature_store=world['store'])
    ds = build_dataset(opt)
    item = ds[1]  # meta.csv: domains alternate indoor, outdoor
    assert torch.equal(item['domain_prob'], torch.tensor([0.0, 1.0]))
    assert torch.equal(item['text'], world['prior'].domain_text[1])
    # without a store: the documented deterministic stand-in vector
    ds2 = build_dataset(dict(opt, feature_store=None))
    assert torch.equal(ds2[0]['text'], standin_text_feature('indoor'))
    assert torch.equal(ds2[3]['text'], standin_text_feature('outdoor'))
    assert not torch.equal(standin_text_feature('indoor'), standin_text_feature('outdoor'))
    with pytest.raises(ValueError, match='meta_file'):
        build_dataset(ds_opt(root, cond_source='oracle'))
    bad = tmp_path / 'meta.csv'
    rows = list(csv.DictReader(open(os.path.join(root, 'meta.csv'))))
    rows[0]['domain'] = 'underwater'
    with open(bad, 'w', newline='') as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    with pytest.raises(ValueError, match='underwater'):
        build_dataset(dict(opt, meta_file=str(bad)))
    rows[0]['hazy'] = 'ghost.png'
    with open(bad, 'w', newline='') as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    with pytest.raises(ValueError, match='ghost.png'):
        build_dataset(dict(opt, meta_file=str(bad)))


def test_lmdb_backend_matches_disk(world):
    root = world['root']
    disk = build_dataset(ds_opt(root, phase='val', feature_store=world['store']))
    lmdb = build_dataset(ds_opt(root, phase='val', feature_store=world['store'], io_backend={'type': 'lmdb'},
                                dataroot_lq=os.path.join(root, 'hazy.lmdb'), dataroot_gt=os.path.join(root, 'GT.lmdb')))
    assert lmdb.keys == disk.keys
    a, b = disk[4], lmdb[4]
    assert torch.equal(a['lq'], b['lq']) and torch.equal(a['gt'], b['gt']) and torch.equal(a['cond'], b['cond'])
    assert b['lq_path'] == 'img_004'
    loader = DataLoader(build_dataset(ds_opt(root, feature_store=world['store'], io_backend={'type': 'lmdb'},
                                             dataroot_lq=os.path.join(root, 'hazy.lmdb'),
                                             dataroot_gt=os.path.join(root, 'GT.lmdb'))),
                        batch_size=2, num_workers=2)
    assert sum(b['lq'].shape[0] for b in loader) == 6


# ------------------------------------------------------------------------------------------------ bad input
def _copy(world, tmp_path):
    import shutil
    root = str(tmp_path / 'd')
    shutil.copytree(world['root'], root, ignore=shutil.ignore_patterns('*.lmdb'))
    return root


def test_hazy_without_gt(world, tmp_path):
    root = _copy(world, tmp_path)
    os.remove(os.path.join(root, 'GT', 'img_001.png'))
    os.remove(os.path.join(root, 'GT', 'img_004.png'))
    with pytest.raises(ValueError, match=r'2 of 6 hazy image\(s\).*no GT.*img_001.png, img_004.png'):
        build_dataset(ds_opt(root))


def test_size_mismatch_and_crop_gt_to_lq(world, tmp_path):
    root = _copy(world, tmp_path)
    write_img(os.path.join(root, 'GT', 'img_003.png'), np.zeros((30, 32, 3), np.uint8))
    with pytest.raises(ValueError, match=r'1 hazy/GT pair\(s\) differ in size.*img_003.png 28x24.*32x30'):
        build_dataset(ds_opt(root))
    ds = build_dataset(ds_opt(root, phase='val', crop_gt_to_lq=True))
    assert ds[3]['gt'].shape == ds[3]['lq'].shape == (3, 24, 28)


def test_too_small_for_gt_size(world):
    with pytest.raises(ValueError, match=r'6 image\(s\) smaller than gt_size=32'):
        build_dataset(ds_opt(world['root'], gt_size=32))


def test_unreadable_and_truncated_images(world, tmp_path):
    root = _copy(world, tmp_path)
    path = os.path.join(root, 'hazy', 'img_002.png')
    data = open(path, 'rb').read()
    open(path, 'wb').write(data[:len(data) // 2])  # truncated
    with pytest.raises(ValueError, match=r'1 unreadable or truncated image\(s\).*img_002.png'):
        build_dataset(ds_opt(root))
    open(path, 'wb').write(b'not an image at all')
    with pytest.raises(ValueError, match='img_002.png'):
        build_dataset(ds_opt(root))
    open(path, 'wb').write(data[:-12])  # IEND chunk cut: header fine, decode may still pass
    with pytest.raises(ValueError, match='img_002.png'):
        build_dataset(ds_opt(root, check_images='full'))


def test_missing_from_store_and_store_mismatch(world, tmp_path):
    root = _copy(world, tmp_path)
    write_img(os.path.join(root, 'hazy', 'extra_1.png'), np.zeros((24, 28, 3), np.uint8))
    write_img(os.path.join(root, 'GT', 'extra_1.png'), np.zeros((24, 28, 3), np.uint8))
    with pytest.raises(ValueError, match=r'1 of 7 image\(s\) are missing from the feature store.*extra_1'):
        build_dataset(ds_opt(root, feature_store=world['store']))
    for clip, what in (({'model': 'ViT-B-32'}, 'model'), ({'domains': ['day', 'night']}, 'domains'),
                       ({'templates': ['a {}']}, 'templates')):
        with pytest.raises(ValueError, match=f'does not match the CLIP options: {what}'):
            build_dataset(ds_opt(world['root'], feature_store=world['store'], clip=clip))
    with pytest.raises(ValueError, match='embed dim: store 512, expected 768'):
        build_dataset(ds_opt(world['root'], feature_store=world['store'], cond_dim=768))
    with pytest.raises(ValueError, match='needs feature_store'):
        build_dataset(ds_opt(world['root'], cond_source='store'))
    with pytest.raises(FileNotFoundError, match='nope.pt'):
        build_dataset(ds_opt(world['root'], feature_store=str(tmp_path / 'nope.pt')))


def test_empty_and_missing_folders(tmp_path):
    os.makedirs(tmp_path / 'e' / 'hazy')
    os.makedirs(tmp_path / 'e' / 'GT')
    with pytest.raises(ValueError, match='No images in'):
        build_dataset(ds_opt(str(tmp_path / 'e')))
    with pytest.raises(FileNotFoundError, match='nowhere'):
        build_dataset(ds_opt(str(tmp_path / 'nowhere')))
    with pytest.raises(ValueError, match='cond_source'):
        build_dataset(dict(ds_opt(str(tmp_path / 'e')), cond_source='clip'))


def test_yaml_round_trip_builds_the_same(world):
    opt = ds_opt(world['root'], feature_store=world['store'], cond_mode='soft')
    again = yaml.safe_load(yaml.safe_dump(copy.deepcopy(opt)))
    assert len(build_dataset(again)) == len(build_dataset(opt)) == 6
