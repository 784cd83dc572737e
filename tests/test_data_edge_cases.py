"""Edge cases of the data tools: re-runs, underscores and extensions in names, non-ASCII keys, file modes."""
import csv
import os
import os.path as osp
import stat

import cv2
import numpy as np
import pytest
import torch

from _train_helpers import load_script
from mixcl_arch.data.clip_paired_image_dataset import CLIPPairedImageDataset
from mixcl_arch.data.transmission_patch_dataset import TransmissionPatchDataset
from mixcl_arch.utils.file_io import atomic_write_text
from mixcl_arch.utils.image_io import decode_image

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


_script = load_script


def _img(path, h=24, w=28, seed=0):
    os.makedirs(osp.dirname(path), exist_ok=True)
    img = (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)
    assert cv2.imwrite(str(path), img)


def _rows(path):
    with open(path, newline='') as f:
        return list(csv.DictReader(f))


def test_overwrite_rerun_drops_the_previous_split(tmp_path):
    mhp = _script('make_haze_pairs')
    for name in ('a', 'b', 'c'):
        _img(tmp_path / 'clean' / f'{name}.png', seed=ord(name))
    out = tmp_path / 'out'
    args = ['--input', str(tmp_path / 'clean'), '--output', str(out), '--versions', '1', '--domain', 'outdoor']
    mhp.main(args + ['--test-names', 'a'])
    assert {r['gt'] for r in _rows(out / 'test' / 'meta.csv')} == {'a.png'}
    mhp.main(args + ['--overwrite'])
    assert not (out / 'test').exists() or not any((out / 'test').rglob('*.png'))
    assert not (out / 'test' / 'meta.csv').exists()
    assert {r['gt'] for r in _rows(out / 'train' / 'meta.csv')} == {'a.png', 'b.png', 'c.png'}


def test_haze_pairs_names_with_underscores_pair_with_their_own_gt(tmp_path):
    mhp = _script('make_haze_pairs')
    _img(tmp_path / 'clean' / 'img.png', seed=1)
    _img(tmp_path / 'clean' / 'img_2.png', seed=2)
    out = tmp_path / 'out'
    mhp.main(['--input', str(tmp_path / 'clean'), '--output', str(out), '--versions', '2', '--domain', 'indoor'])
    truth = {r['hazy']: r['gt'] for r in _rows(out / 'train' / 'meta.csv')}
    # the dataset's name rule, without the CSV
    ds = CLIPPairedImageDataset(dict(dataroot_lq=str(out / 'train' / 'hazy'), dataroot_gt=str(out / 'train' / 'GT'),
                                     gt_name_rule='haze_pairs', phase='val'))
    got = {osp.basename(d['lq_path']): osp.basename(d['gt_path']) for d in (ds[i] for i in range(len(ds)))}
    assert got == truth and set(truth.values()) == {'img.png', 'img_2.png'}
    # and the re-indexing of an existing split
    os.remove(out / 'train' / 'meta.csv')
    mhp.main(['--index-existing', str(out / 'train'), '--domain', 'outdoor'])
    assert {r['hazy']: r['gt'] for r in _rows(out / 'train' / 'meta.csv')} == truth


def test_names_that_differ_only_by_extension_fail_at_construction(tmp_path):
    for sub in ('hazy', 'GT'):
        _img(tmp_path / sub / 'a.png', seed=1)
        _img(tmp_path / sub / 'b.png', seed=2)
    _img(tmp_path / 'hazy' / 'a.jpg', seed=3)
    with pytest.raises(ValueError, match=r'differ only by extension.*a\.(jpg|png) / a\.(png|jpg)'):
        CLIPPairedImageDataset(dict(dataroot_lq=str(tmp_path / 'hazy'), dataroot_gt=str(tmp_path / 'GT')))
    with pytest.raises(ValueError, match='differ only by extension'):
        _script('extract_clip_features').list_keys(str(tmp_path / 'hazy'))


def test_non_ascii_store_keys_are_the_same_for_disk_and_lmdb(tmp_path):
    create_lmdb = _script('create_lmdb')
    split = tmp_path / 'ds' / 'train'
    _img(split / 'hazy' / 'café_1.png', seed=1)
    _img(split / 'GT' / 'café.png', seed=2)
    (split / 'meta.csv').write_text('hazy,gt,domain\ncafé_1.png,café.png,indoor\n', encoding='utf-8')
    create_lmdb.main(['--root', str(tmp_path / 'ds'), '--non-ascii', 'quote', '--quiet'])
    extract = _script('extract_clip_features')
    disk_items, _ = extract.list_keys(str(split / 'hazy'))
    lmdb_items, _ = extract.list_keys(str(split / 'hazy.lmdb'))
    csv_items, _ = extract.list_keys(str(split / 'hazy.lmdb'), str(split / 'meta.csv'))
    assert [k for k, _ in disk_items] == [k for k, _ in lmdb_items] == [k for k, _ in csv_items] == ['café_1']
    assert lmdb_items[0][1] == csv_items[0][1] == 'caf%C3%A9_1'
    lm = CLIPPairedImageDataset(dict(meta_file=str(split / 'meta.csv'), dataroot_lq=str(split / 'hazy.lmdb'),
                                     dataroot_gt=str(split / 'GT.lmdb'), io_backend=dict(type='lmdb'), phase='val'))
    assert lm.keys == ['café_1']


def test_transmission_dataset_checks_every_image_and_reads_basicsr_lmdb(tmp_path):
    from basicsr.utils.lmdb_util import make_lmdb_from_imgs
    _img(tmp_path / 'clean' / 'a.png', seed=1)
    _img(tmp_path / 'clean' / 'b.png', seed=2)
    opt = dict(dataroot_gt=str(tmp_path / 'clean'), io_backend=dict(type='disk'), phase='train')
    assert len(TransmissionPatchDataset(opt)) > 0
    data = (tmp_path / 'clean' / 'b.png').read_bytes()
    (tmp_path / 'clean' / 'b.png').write_bytes(data[:len(data) // 2])  # truncated, and not the first image
    with pytest.raises(IOError, match='b.png'):
        TransmissionPatchDataset(opt)
    (tmp_path / 'clean' / 'b.png').write_bytes(data)
    make_lmdb_from_imgs(str(tmp_path / 'clean'), str(tmp_path / 'clean.lmdb'), ['a.png', 'b.png'], ['a', 'b'])
    lm = TransmissionPatchDataset(dict(opt, dataroot_gt=str(tmp_path / 'clean.lmdb'), io_backend=dict(type='lmdb')))
    item = lm[0]
    assert item['lq'].shape[-2:] == (16, 16) and torch.isfinite(item['lq']).all()


def test_decode_image_keeps_float_images_in_range(tmp_path):
    path = str(tmp_path / 'f.tif')
    assert cv2.imwrite(path, np.full((4, 5, 3), 0.5, np.float32))
    img = decode_image(path)
    assert img.dtype == np.float32 and np.allclose(img, 0.5)
    # out-of-range and non-finite values (HDR TIFFs) are clipped, for the CLI and the datasets alike
    assert cv2.imwrite(path, np.array([[[-0.5, 1.7, np.nan]]], np.float32))
    assert decode_image(path).tolist() == [[[0.0, 1.0, 0.0]]]


def test_atomic_writes_get_normal_file_permissions(tmp_path):
    path = tmp_path / 'x.txt'
    atomic_write_text('hi', path)
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~mask
