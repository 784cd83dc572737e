"""CLIPPairedImageDataset built from YAML dicts on tiny generated data (folder, RESIDE naming, meta CSV, LMDB).

The dataset serves data only (images, store keys, domain labels, crop records); the conditioning that used to be
computed here is checked through the conditioner that reads those records (mixcl_arch.conditioning)."""
import copy
import csv
import os
import re

import numpy as np
import pytest
import torch
import yaml
from torch.utils.data import DataLoader

import mixcl_arch  # noqa: F401  (before basicsr)
from _clip_helpers import make_pairs, make_tiny_clip, tiny_clip_opt, write_img
from basicsr.data import build_dataset
from mixcl_arch.archs.mixdehazenet_arch import MixCLDehazeNet
from mixcl_arch.clip.prior import CLIPPrior
from mixcl_arch.clip.store import FeatureStore
from mixcl_arch.conditioning.conditioner import CondBatch, OracleConditioner, StoreConditioner, build_conditioner
from mixcl_arch.conditioning.config import MOVED_KEYS, ConditioningConfig
from mixcl_arch.data.clip_data_util import augment_pair, standin_text_feature
from mixcl_arch.utils.options import OptionError

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


def stack_net(num_cond=1, text_dim=512):
    """The smallest MixCLDehazeNet: the conditioner reads num_cond / cond_dim from it."""
    return MixCLDehazeNet(variant='T', num_cond=num_cond, text_dim=text_dim, data_range='unit')


def conditioner(world, net=None, stores=(), **conditioning):
    """The conditioner of a run whose clip section is the one the world's store was made with."""
    cfg = ConditioningConfig.from_options({'clip': world['clip'], 'conditioning': dict({'source': 'store'},
                                                                                        **conditioning)})
    return build_conditioner(cfg, net if net is not None else stack_net(), stores=stores)


def conditioned(cond, ds, indices):
    """The conditioner's output for the collated items ``indices`` of ``ds``, and the batch."""
    batch = torch.utils.data.default_collate([ds[i] for i in indices])
    return cond(CondBatch.from_data(batch, batch['lq'])), batch


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


def test_folder_train_items_serve_data_and_the_store_conditioner_reads_them(world):
    ds = build_dataset(ds_opt(world['root'], feature_store=world['store']))
    assert len(ds) == 6
    item = ds[2]
    assert set(item) == {'lq', 'gt', 'lq_path', 'gt_path', 'key', 'crop', 'feature_store'}  # no conditioning
    assert item['lq'].shape == item['gt'].shape == (3, 16, 16) and item['lq'].dtype == torch.float32
    assert 0 <= float(item['lq'].min()) and float(item['lq'].max()) <= 1
    assert item['key'] == world['names'][2] and item['feature_store'] == world['store']
    assert item['crop'].dtype == torch.int64 and item['crop'].shape == (7,) and item['crop'][2:4].tolist() == [16, 16]
    assert item['lq_path'].endswith('img_002.png') and item['gt_path'].endswith(os.path.join('GT', 'img_002.png'))
    # hazy = 0.5 * gt + 100/255 at the same crop: the crop is paired
    assert torch.allclose(item['lq'], torch.floor(item['gt'] * 255 * 0.5 + 100) / 255, atol=1.01 / 255)
    # what the dataset used to put in the item ('cond' = the store's hard text feature) comes from the conditioner
    cond = conditioner(world, stores=[world['store']])
    assert isinstance(cond, StoreConditioner)
    out, _ = conditioned(cond, ds, [2, 0])
    ref = world['store_obj'].get_rows(world['store_obj'].rows([world['names'][2], world['names'][0]]))
    assert out.shape == (2, 1, 512) and torch.equal(out[:, 0], ref['text_hard'])


def test_soft_mode_and_extra_vectors_through_the_conditioner(world):
    ds = build_dataset(ds_opt(world['root'], feature_store=world['store']))
    cond = conditioner(world, stack_net(4), stores=[world['store']], mode='soft',
                       extra=['image', 'density', 'domain:hard'])
    out, _ = conditioned(cond, ds, [1])
    ref = world['store_obj'].get(world['names'][1])
    assert out.shape == (1, 4, 512)
    for k, key in enumerate(['text_soft', 'image_emb', 'density_text_soft', 'text_hard']):
        assert torch.equal(out[0, k], ref[key]), key
    with pytest.raises(ValueError, match='weather'):
        conditioner(world, stack_net(2), stores=[world['store']], extra=['weather'])


def test_dataloader_with_two_workers_collates_the_records(world):
    ds = build_dataset(ds_opt(world['root'], feature_store=world['store']))
    loader = DataLoader(ds, batch_size=3, num_workers=2, shuffle=False)
    batches = list(loader)
    assert len(batches) == 2
    b = batches[0]
    assert b['lq'].shape == (3, 3, 16, 16) and b['crop'].shape == (3, 7) and b['crop'].dtype == torch.int64
    assert b['key'] == world['names'][:3] and b['feature_store'] == [world['store']] * 3
    out = conditioner(world, stack_net(2), stores=[world['store']], extra=['image'])(
        CondBatch.from_data(b, b['lq']))
    assert out.shape == (3, 2, 512)
    assert torch.equal(out[:, 1], world['store_obj'].get_rows(torch.arange(3))['image_emb'])


def test_test_mode_full_and_center_crop(world):
    full = build_dataset(ds_opt(world['root'], phase='val'))
    assert full[0]['lq'].shape == (3, 24, 28) and 'feature_store' not in full[0] and 'domain' not in full[0]
    assert full[0]['crop'].tolist() == [0, 0, 24, 28, 0, 0, 0]
    cc = build_dataset(ds_opt(world['root'], phase='val', center_crop=10))
    assert cc[0]['lq'].shape == (3, 10, 10) and cc[0]['crop'].tolist() == [7, 9, 10, 10, 0, 0, 0]
    assert torch.equal(cc[0]['lq'], full[0]['lq'][:, 7:17, 9:19])
    lq_only = build_dataset(ds_opt(world['root'], phase='val', dataroot_gt=None))
    assert 'gt' not in lq_only[0] and len(lq_only) == 6


def replay(img, crop):
    """The transform a crop record describes, applied to a (C, H, W) tensor: crop, hflip, vflip, k quarter turns."""
    top, left, height, width, hflip, vflip, k = crop.tolist()
    out = img[:, top:top + height, left:left + width]
    if hflip:
        out = out.flip(-1)
    if vflip:
        out = out.flip(-2)
    return torch.rot90(out, k, dims=(1, 2))


def test_crop_record_says_exactly_what_was_done_to_the_pair(world):
    import random
    full = build_dataset(ds_opt(world['root'], phase='val'))[0]
    ds = build_dataset(ds_opt(world['root'], gt_size=16, use_hflip=True, use_vflip=True, use_rot=True))
    seen = set()
    for s in range(40):
        random.seed(s)
        item = ds[0]
        lq, gt, crop = item['lq'], item['gt'], item['crop']
        assert lq.shape == (3, 16, 16)
        assert torch.equal(lq, replay(full['lq'], crop)) and torch.equal(gt, replay(full['gt'], crop)), crop
        seen.add(tuple(crop.tolist()))
    flags = {c[4:] for c in seen}
    assert {f[0] for f in flags} == {0, 1} and {f[1] for f in flags} == {0, 1} and {f[2] for f in flags} == {0, 1, 2, 3}
    assert len({c[:2] for c in seen}) > 4  # several offsets


def test_augment_pair_reports_the_flags_it_drew():
    import random
    img = np.arange(2 * 3, dtype=np.float32).reshape(2, 3, 1)
    for seed in range(12):
        (out, none), (hflip, vflip, k) = augment_pair([img, None], True, True, True, rng=random.Random(seed))
        expect = img[:, ::-1] if hflip else img
        expect = expect[::-1] if vflip else expect
        assert none is None and np.array_equal(out, np.rot90(expect, k, (0, 1)))
    assert augment_pair([img], False, False, False)[1] == (False, False, 0)


def test_edge_decay_prefers_borders():
    import random

    from mixcl_arch.data.clip_data_util import random_crop_pair
    img = np.arange(100 * 100, dtype=np.float32).reshape(100, 100, 1)
    rng = random.Random(0)
    crops = [random_crop_pair(img, None, 20, edge_decay=1.0, rng=rng) for _ in range(400)]
    assert all(int(lq[0, 0, 0]) == y * 100 + x and gt is None for lq, gt, (y, x) in crops)  # the offsets it reports
    starts = [y for _, _, (y, _) in crops]
    border = np.mean([s in (0, 80) for s in starts])
    assert border > 0.15  # ~ 20/100 + uniform share; without edge decay ~ 2/81
    rng = random.Random(0)
    starts = [random_crop_pair(img, None, 20, rng=rng)[2][0] for _ in range(400)]
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


def _write_rows(path, rows):
    with open(path, 'w', newline='') as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def test_meta_csv_domain_labels_and_the_oracle_conditioner(world, tmp_path):
    root = world['root']
    opt = ds_opt(root, meta_file=os.path.join(root, 'meta.csv'), feature_store=world['store'])
    ds = build_dataset(opt)
    assert [ds[i]['domain'] for i in range(4)] == ['indoor', 'outdoor', 'indoor', 'outdoor']  # meta.csv alternates
    cond = conditioner(world, source='oracle')
    assert isinstance(cond, OracleConditioner)
    out, _ = conditioned(cond, ds, [0, 1])  # the domain text features of the items' store
    assert torch.equal(out[:, 0], world['prior'].domain_text[[0, 1]])
    # without a store: the documented deterministic stand-in vector
    ds2 = build_dataset(dict(opt, feature_store=None))
    out, _ = conditioned(cond, ds2, [0, 3])
    assert torch.equal(out[:, 0], torch.stack([standin_text_feature('indoor'), standin_text_feature('outdoor')]))
    assert not torch.equal(standin_text_feature('indoor'), standin_text_feature('outdoor'))
    no_csv = build_dataset(ds_opt(root))
    assert 'domain' not in no_csv[0]
    with pytest.raises(ValueError, match='meta_file'):
        conditioned(cond, no_csv, [0])
    rows = list(csv.DictReader(open(os.path.join(root, 'meta.csv'))))
    bad = tmp_path / 'meta.csv'
    _write_rows(bad, [dict(r, domain='underwater') if i == 0 else r for i, r in enumerate(rows)])
    with pytest.raises(ValueError, match='underwater'):  # a label the store has no text feature for
        conditioned(cond, build_dataset(dict(opt, meta_file=str(bad))), [0])
    _write_rows(bad, [dict(r, domain='') if i == 2 else r for i, r in enumerate(rows)])
    with pytest.raises(ValueError, match=r"meta.csv: empty 'domain' label on line\(s\) 4"):
        build_dataset(dict(opt, meta_file=str(bad)))
    _write_rows(bad, [{k: v for k, v in r.items() if k != 'domain'} for r in rows])
    assert 'domain' not in build_dataset(dict(opt, meta_file=str(bad)))[0]  # no column: no labels, no error
    _write_rows(bad, [dict(r, place=r['domain']) for r in rows])
    assert build_dataset(dict(opt, meta_file=str(bad), domain_column='place'))[1]['domain'] == 'outdoor'
    with pytest.raises(ValueError, match=r"missing column\(s\) \['scene'\]"):
        build_dataset(dict(opt, meta_file=str(bad), domain_column='scene'))
    _write_rows(bad, [dict(r, hazy='ghost.png') if i == 0 else r for i, r in enumerate(rows)])
    with pytest.raises(ValueError, match='ghost.png'):
        build_dataset(dict(opt, meta_file=str(bad)))


def test_lmdb_backend_matches_disk(world):
    root = world['root']
    disk = build_dataset(ds_opt(root, phase='val', feature_store=world['store']))
    lmdb = build_dataset(ds_opt(root, phase='val', feature_store=world['store'], io_backend={'type': 'lmdb'},
                                dataroot_lq=os.path.join(root, 'hazy.lmdb'), dataroot_gt=os.path.join(root, 'GT.lmdb')))
    assert lmdb.keys == disk.keys
    a, b = disk[4], lmdb[4]
    assert torch.equal(a['lq'], b['lq']) and torch.equal(a['gt'], b['gt']) and torch.equal(a['crop'], b['crop'])
    assert a['key'] == b['key'] == 'img_004' and b['lq_path'] == 'img_004'
    cond = conditioner(world, stores=[world['store']])
    assert torch.equal(conditioned(cond, disk, [4, 5])[0], conditioned(cond, lmdb, [4, 5])[0])
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


def test_missing_from_store_fails_in_the_dataset_and_a_mismatch_in_the_conditioner(world, tmp_path):
    root = _copy(world, tmp_path)
    write_img(os.path.join(root, 'hazy', 'extra_1.png'), np.zeros((24, 28, 3), np.uint8))
    write_img(os.path.join(root, 'GT', 'extra_1.png'), np.zeros((24, 28, 3), np.uint8))
    with pytest.raises(ValueError, match=r'1 of 7 image\(s\) are missing from the feature store.*extra_1'):
        build_dataset(ds_opt(root, feature_store=world['store']))
    with pytest.raises(FileNotFoundError, match='nope.pt'):
        build_dataset(ds_opt(world['root'], feature_store=str(tmp_path / 'nope.pt')))
    # a store made with other CLIP options, or of another width, fails when the run's conditioner is built
    for clip, what in (({'model': 'ViT-B-32'}, 'model'), ({'domains': ['day', 'night']}, 'domains'),
                       ({'templates': ['a {}']}, 'templates')):
        with pytest.raises(ValueError, match=f'does not match the CLIP options: {what}'):
            conditioner(dict(world, clip=dict(world['clip'], **clip)), stores=[world['store']])
    with pytest.raises(ValueError, match='embed dim: store 512, expected 768'):
        conditioner(world, stack_net(text_dim=768), stores=[world['store']])
    # source store, items without a feature_store and no conditioning.store
    with pytest.raises(ValueError, match='feature_store'):
        conditioned(conditioner(world), build_dataset(ds_opt(world['root'])), [0])


@pytest.mark.parametrize('key', sorted(k.rpartition('.')[2] for k in MOVED_KEYS if k.startswith('datasets.')))
def test_old_conditioning_keys_fail_at_construction_naming_their_new_place(world, key):
    new = MOVED_KEYS[f'datasets.*.{key}']
    with pytest.raises(OptionError, match=rf'datasets\.val\.{key}: this setting moved to {re.escape(new)}'):
        build_dataset(ds_opt(world['root'], phase='val', **{key: 'x'}))


def test_old_cond_mode_names_conditioning_mode(world):
    with pytest.raises(OptionError, match=r'cond_mode: this setting moved to conditioning\.mode'):
        build_dataset(ds_opt(world['root'], feature_store=world['store'], cond_mode='soft'))


def test_empty_and_missing_folders(tmp_path):
    os.makedirs(tmp_path / 'e' / 'hazy')
    os.makedirs(tmp_path / 'e' / 'GT')
    with pytest.raises(ValueError, match=r'No images found in .*hazy'):
        build_dataset(ds_opt(str(tmp_path / 'e')))
    with pytest.raises(FileNotFoundError, match='nowhere'):
        build_dataset(ds_opt(str(tmp_path / 'nowhere')))


def test_yaml_round_trip_builds_the_same(world):
    opt = ds_opt(world['root'], feature_store=world['store'], meta_file=os.path.join(world['root'], 'meta.csv'))
    again = yaml.safe_load(yaml.safe_dump(copy.deepcopy(opt)))
    assert len(build_dataset(again)) == len(build_dataset(opt)) == 6
