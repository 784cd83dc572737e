"""LMDB round trip through scripts/create_lmdb.py and BasicSR's FileClient, including BasicSR's pitfalls."""
import importlib.util
import os.path as osp

import cv2
import lmdb
import numpy as np
import pytest
import torch

import mixcl_arch  # noqa: F401  (compat before basicsr)
from basicsr.utils import FileClient, imfrombytes
from mixcl_arch.data import lmdb_tools
from mixcl_arch.utils.image_io import image_key

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
_spec = importlib.util.spec_from_file_location('create_lmdb', osp.join(ROOT, 'scripts', 'create_lmdb.py'))
create_lmdb = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(create_lmdb)


def _img(path, h, w, seed, c=3):
    img = (np.random.default_rng(seed).random((h, w, c)) * 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), img if c > 1 else img[..., 0])
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


def _dataset(root):
    imgs = {}
    # dotted stems (BasicSR's split('.') bug), same names in two subfolders, a JPEG and a gray image
    imgs['lq', 'train', '0001_0.8_0.2'] = _img(root / 'train' / 'hazy' / '0001_0.8_0.2.png', 20, 30, 1)
    imgs['lq', 'train', '0001_0.9_0.1'] = _img(root / 'train' / 'hazy' / '0001_0.9_0.1.jpg', 20, 30, 2)
    imgs['lq', 'train', 'a/x'] = _img(root / 'train' / 'hazy' / 'a' / 'x.png', 16, 16, 3)
    imgs['lq', 'train', 'b/x'] = _img(root / 'train' / 'hazy' / 'b' / 'x.png', 12, 18, 4, c=1)
    imgs['gt', 'train', '0001'] = _img(root / 'train' / 'GT' / '0001.png', 20, 30, 5)
    imgs['gt', 'train', 'a/x'] = _img(root / 'train' / 'GT' / 'a' / 'x.png', 16, 16, 6)
    imgs['gt', 'train', 'b/x'] = _img(root / 'train' / 'GT' / 'b' / 'x.png', 12, 18, 7)
    imgs['lq', 'test', 't_1'] = _img(root / 'test' / 'hazy' / 't_1.png', 10, 10, 8)
    imgs['gt', 'test', 't'] = _img(root / 'test' / 'GT' / 't.png', 10, 10, 9)
    (root / 'train' / 'meta.csv').write_text('hazy,gt,domain,beta,A,depth_source\n')
    (root / 'train' / 'feats.pt').write_bytes(b'feature-store-bytes')
    (root / 'test' / 'feats.pt').write_bytes(b'feature-store-test')
    return imgs


def test_round_trip_with_basicsr_file_client(tmp_path):
    imgs = _dataset(tmp_path / 'ds')
    summary = create_lmdb.main(
        ['--root', str(tmp_path / 'ds'), '--out', str(tmp_path / 'out'), '--feature-store', 'feats.pt', '--quiet'])
    assert [d['images'] for d in summary['databases']] == [4, 3, 1, 1]
    for split in ('train', 'test'):
        for sub in ('hazy', 'GT'):
            p = tmp_path / 'out' / split / f'{sub}.lmdb'
            assert (p / 'data.mdb').is_file() and (p / 'meta_info.txt').is_file()
            assert not osp.exists(str(p) + '.tmp')
    assert (tmp_path / 'out' / 'train' / 'feats.pt').read_bytes() == b'feature-store-bytes'
    assert (tmp_path / 'out' / 'train' / 'meta.csv').is_file()

    meta = lmdb_tools.read_meta_info(str(tmp_path / 'out' / 'train' / 'hazy.lmdb'))
    assert [m[0] for m in meta] == ['0001_0.8_0.2', '0001_0.9_0.1', 'a/x', 'b/x']
    assert meta[3][1] == (12, 18, 1) and meta[0][1:] == ((20, 30, 3), 1)
    line = (tmp_path / 'out' / 'train' / 'hazy.lmdb' / 'meta_info.txt').read_text().splitlines()[0]
    assert line == '0001_0.8_0.2 (20,30,3) 1'

    for split in ('train', 'test'):
        client = FileClient('lmdb', db_paths=[str(tmp_path / 'out' / split / 'hazy.lmdb'),
                                              str(tmp_path / 'out' / split / 'GT.lmdb')], client_keys=['lq', 'gt'])
        for (kind, s, key), ref in imgs.items():
            if s != split:
                continue
            got = imfrombytes(client.get(key, kind), flag='unchanged')
            np.testing.assert_array_equal(got, ref)


def test_map_size_from_data_no_map_full(tmp_path):
    # 40 incompressible 128x128 images (~2 MB as PNG): far above a first-image guess for a tiny first image
    folder = tmp_path / 'imgs'
    _img(folder / '000_small.png', 2, 2, 0)
    for i in range(1, 40):
        _img(folder / f'{i:03d}.png', 128, 128, i)
    res = lmdb_tools.make_lmdb_from_folder(str(folder), str(tmp_path / 'x.lmdb'), compress_level=0, batch=7,
                                           progress=False)
    assert res['images'] == 40 and res['data_bytes'] > 40 * 128 * 128 * 3 * 0.9
    assert res['map_size'] >= res['data_bytes']
    assert lmdb_tools.verify_lmdb(str(tmp_path / 'x.lmdb'), progress=False) == 40


def test_collisions_non_ascii_and_existing(tmp_path):
    coll = tmp_path / 'coll'
    _img(coll / 'same.png', 4, 4, 0)
    _img(coll / 'same.jpg', 4, 4, 1)
    with pytest.raises(ValueError, match="same key 'same'"):
        lmdb_tools.make_lmdb_from_folder(str(coll), str(tmp_path / 'c.lmdb'), progress=False)
    assert not (tmp_path / 'c.lmdb').exists()

    uni = tmp_path / 'uni'
    ref = _img(uni / 'café_1.png', 6, 5, 2)
    with pytest.raises(ValueError, match='café_1.png: non-ASCII'):
        lmdb_tools.make_lmdb_from_folder(str(uni), str(tmp_path / 'u.lmdb'), progress=False)
    lmdb_tools.make_lmdb_from_folder(str(uni), str(tmp_path / 'u.lmdb'), non_ascii='quote', progress=False)
    key = image_key('café_1.png', non_ascii='quote')
    assert key.isascii() and key == 'caf%C3%A9_1'
    client = FileClient('lmdb', db_paths=str(tmp_path / 'u.lmdb'))
    np.testing.assert_array_equal(imfrombytes(client.get(key), flag='unchanged'), ref)

    with pytest.raises(FileExistsError, match='u.lmdb'):
        lmdb_tools.make_lmdb_from_folder(str(uni), str(tmp_path / 'u.lmdb'), non_ascii='quote', progress=False)
    with pytest.raises(ValueError, match='No images'):
        (tmp_path / 'empty').mkdir()
        lmdb_tools.make_lmdb_from_folder(str(tmp_path / 'empty'), str(tmp_path / 'e.lmdb'), progress=False)
    with pytest.raises(FileNotFoundError, match='Feature store.*missing.pt'):
        _dataset(tmp_path / 'ds')
        create_lmdb.main(['--root', str(tmp_path / 'ds'), '--feature-store', 'missing.pt', '--quiet'])


def test_verify_detects_corruption(tmp_path):
    folder = tmp_path / 'imgs'
    _img(folder / 'a.png', 8, 8, 0)
    _img(folder / 'b.png', 8, 8, 1)
    path = str(tmp_path / 'v.lmdb')
    lmdb_tools.make_lmdb_from_folder(str(folder), path, progress=False)
    env = lmdb.open(path, map_size=1 << 24)
    with env.begin(write=True) as txn:
        txn.put(b'b', cv2.imencode('.png', np.zeros((8, 9, 3), np.uint8))[1].tobytes())
    env.close()
    with pytest.raises(ValueError, match="key 'b' decodes to"):
        lmdb_tools.verify_lmdb(path, progress=False)


def test_lmdb_feeds_clip_paired_dataset_like_disk(tmp_path):
    """make_haze_pairs -> create_lmdb -> CLIPPairedImageDataset(lmdb) gives the same tensors as the disk folders."""
    from mixcl_arch.data.clip_paired_image_dataset import CLIPPairedImageDataset
    spec = importlib.util.spec_from_file_location('make_haze_pairs', osp.join(ROOT, 'scripts', 'make_haze_pairs.py'))
    mhp = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mhp)
    _img(tmp_path / 'clean' / 'p.q.png', 20, 24, 1)
    _img(tmp_path / 'clean' / 'sub' / 'r.png', 18, 18, 2)
    mhp.main(['--input', str(tmp_path / 'clean'), '--output', str(tmp_path / 'ds'), '--domain', 'outdoor',
              '--versions', '2'])
    create_lmdb.main(['--root', str(tmp_path / 'ds'), '--quiet'])
    split = tmp_path / 'ds' / 'train'
    common = dict(meta_file=str(split / 'meta.csv'), phase='val')
    lm = CLIPPairedImageDataset(dict(common, dataroot_lq=str(split / 'hazy.lmdb'), dataroot_gt=str(split / 'GT.lmdb'),
                                     io_backend=dict(type='lmdb')))
    disk = CLIPPairedImageDataset(dict(common, dataroot_lq=str(split / 'hazy'), dataroot_gt=str(split / 'GT')))
    assert len(lm) == len(disk) == 4
    for i in range(4):
        a, b = lm[i], disk[i]
        assert torch.equal(a['lq'], b['lq']) and torch.equal(a['gt'], b['gt'])
        # the same feature-store key and domain label, so conditioning looks up the same rows
        assert (a['key'], a['domain']) == (b['key'], b['domain']) and a['domain'] == 'outdoor'


def test_non_ascii_names_quoted_in_lmdb_are_found_through_the_pair_csv(tmp_path):
    """create_lmdb --non-ascii quote percent-encodes keys; the dataset's meta_file mode applies the same rule."""
    from mixcl_arch.data.clip_paired_image_dataset import CLIPPairedImageDataset
    split = tmp_path / 'ds' / 'train'
    _img(split / 'hazy' / 'café_1.png', 12, 14, 1)
    _img(split / 'GT' / 'café.png', 12, 14, 2)
    (split / 'meta.csv').write_text('hazy,gt,domain\ncafé_1.png,café.png,indoor\n', encoding='utf-8')
    create_lmdb.main(['--root', str(tmp_path / 'ds'), '--non-ascii', 'quote', '--quiet'])
    keys = [k for k, _, _ in lmdb_tools.read_meta_info(str(split / 'hazy.lmdb'))]
    assert keys == ['caf%C3%A9_1']
    common = dict(meta_file=str(split / 'meta.csv'), phase='val')
    lm = CLIPPairedImageDataset(dict(common, dataroot_lq=str(split / 'hazy.lmdb'), dataroot_gt=str(split / 'GT.lmdb'),
                                     io_backend=dict(type='lmdb')))
    disk = CLIPPairedImageDataset(dict(common, dataroot_lq=str(split / 'hazy'), dataroot_gt=str(split / 'GT')))
    assert torch.equal(lm[0]['lq'], disk[0]['lq']) and torch.equal(lm[0]['gt'], disk[0]['gt'])
    assert lm[0]['key'] == disk[0]['key'] == 'café_1'
