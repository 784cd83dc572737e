"""Haze physics, depth I/O and scripts/make_haze_pairs.py on tiny generated images."""
import csv
import importlib.util
import os.path as osp

import cv2
import numpy as np
import pytest

import mixcl_arch  # noqa: F401  (compat before basicsr)
from mixcl_arch.data import haze_synthesis as haze

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def _load_script(name):
    spec = importlib.util.spec_from_file_location(name, osp.join(ROOT, 'scripts', name + '.py'))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


make_haze_pairs = _load_script('make_haze_pairs')


def _write_img(path, h=24, w=32, seed=0):
    rng = np.random.default_rng(seed)
    img = (rng.random((h, w, 3)) * 255).astype(np.uint8)
    cv2.imwrite(str(path), img)
    return img


def test_physics_exact_on_constant_image():
    clear = np.full((5, 7, 3), 0.25, np.float32)
    depth = np.full((5, 7), 2.0, np.float32)
    hazy, t = haze.synthesize_haze(clear, depth, beta=0.5, A=0.9)
    t_ref = np.exp(-1.0)
    np.testing.assert_allclose(t, t_ref, rtol=1e-6)
    np.testing.assert_allclose(hazy, 0.25 * t_ref + 0.9 * (1 - t_ref), rtol=1e-6)
    # zero depth: no haze; per-channel A
    hazy0, _ = haze.synthesize_haze(clear, np.zeros((5, 7), np.float32), beta=1.3, A=0.8)
    np.testing.assert_allclose(hazy0, clear)
    hazy_c, _ = haze.synthesize_haze(clear, depth, beta=0.5, A=[1.0, 0.5, 0.0])
    np.testing.assert_allclose(hazy_c[0, 0], 0.25 * t_ref + np.array([1.0, 0.5, 0.0]) * (1 - t_ref), rtol=1e-6)


def test_physics_rejects_bad_input():
    with pytest.raises(ValueError, match='depth shape'):
        haze.synthesize_haze(np.zeros((4, 4, 3)), np.zeros((4, 5)), 1.0, 0.9)
    with pytest.raises(ValueError, match='finite'):
        haze.transmission(np.array([[np.nan]]), 1.0)
    with pytest.raises(ValueError, match='Unknown domain'):
        haze.sample_haze_params(np.random.default_rng(0), 'underwater')


def test_disparity_to_depth_and_fill():
    disp = np.array([[10.0, np.inf], [0.0, 20.0]], np.float32)
    depth = haze.disparity_to_depth(disp, focal=100.0, baseline=2.0, doffs=5.0)
    np.testing.assert_allclose(depth[0, 0], 200.0 / 15.0, rtol=1e-6)
    np.testing.assert_allclose(depth[1, 0], 200.0 / 5.0, rtol=1e-6)
    assert np.isnan(depth[0, 1])
    filled, frac = haze.fill_invalid_depth(depth)
    assert frac == 0.25 and np.all(np.isfinite(filled))
    assert depth[np.isfinite(depth)].min() <= filled[0, 1] <= depth[np.isfinite(depth)].max()


def test_depth_file_formats_round_trip(tmp_path):
    depth = np.linspace(0.5, 4.0, 12, dtype=np.float32).reshape(3, 4)
    np.save(tmp_path / 'd.npy', depth)
    haze.write_pfm(str(tmp_path / 'd.pfm'), depth)
    cv2.imwrite(str(tmp_path / 'd.png'), np.round(depth * 1000).astype(np.uint16))
    for ext in ('npy', 'pfm', 'png'):
        np.testing.assert_allclose(haze.load_depth_file(str(tmp_path / f'd.{ext}')), depth, rtol=1e-3)
    # PFM stores rows bottom-up: the top row must come back first
    assert haze.read_pfm(str(tmp_path / 'd.pfm'))[0, 0] == pytest.approx(0.5)
    cv2.imwrite(str(tmp_path / 'd8.png'), np.zeros((3, 4), np.uint8))
    with pytest.raises(ValueError, match='16-bit'):
        haze.load_depth_file(str(tmp_path / 'd8.png'))
    with pytest.raises(ValueError, match='focal'):
        haze.load_depth_file(str(tmp_path / 'd.npy'), kind='disparity')


def test_pseudo_depth_range_and_vertical_prior():
    clear = np.full((40, 30, 3), 0.3, np.float32)
    d = haze.pseudo_depth(clear, near=0.2)
    assert d.shape == (40, 30)
    assert d.min() == pytest.approx(0.2, abs=1e-5) and d.max() == pytest.approx(1.0, abs=1e-5)
    assert d[0].mean() > d[-1].mean()  # top rows are farther


def _run_pairs(tmp_path, out, *extra):
    args = ['--input', str(tmp_path / 'in'), '--output', str(out), '--seed', '7']
    return make_haze_pairs.main(args + list(extra))


def _make_input(tmp_path):
    (tmp_path / 'in' / 'sub').mkdir(parents=True)
    _write_img(tmp_path / 'in' / 'a.png', seed=1)
    _write_img(tmp_path / 'in' / 'b.jpg', seed=2)
    _write_img(tmp_path / 'in' / 'sub' / 'c.0.5.png', seed=3)
    with open(tmp_path / 'domains.csv', 'w') as f:
        f.write('file,domain\na.png,indoor\nb.jpg,outdoor\nsub/c.0.5.png,indoor\n')


def test_make_haze_pairs_layout_meta_and_seed(tmp_path):
    _make_input(tmp_path)
    opts = ['--domain-csv', str(tmp_path / 'domains.csv'), '--versions', '2', '--test-names', 'a']
    summary = _run_pairs(tmp_path, tmp_path / 'o1', *opts)
    assert summary['splits']['train']['pairs'] == 4 and summary['splits']['test']['pairs'] == 2
    with open(tmp_path / 'o1' / 'train' / 'meta.csv') as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0].keys()) == ['hazy', 'gt', 'domain', 'beta', 'A', 'depth_source']
    by_gt = {r['gt']: r for r in rows}
    assert by_gt['b.png']['domain'] == 'outdoor' and by_gt['sub/c.0.5.png']['domain'] == 'indoor'
    for r in rows:
        lo, hi = haze.DOMAIN_PRESETS[r['domain']]['beta']
        assert lo <= float(r['beta']) <= hi and r['depth_source'] == 'pseudo'
        assert osp.isfile(tmp_path / 'o1' / 'train' / 'hazy' / r['hazy'])
        assert osp.isfile(tmp_path / 'o1' / 'train' / 'GT' / r['gt'])
        assert haze.clear_stem(osp.splitext(r['hazy'])[0]) + '.png' == r['gt']  # the name rule parses back
    with open(tmp_path / 'o1' / 'test' / 'meta.csv') as f:
        assert {r['gt'] for r in csv.DictReader(f)} == {'a.png'}

    # same seed -> byte-identical outputs; another seed -> different haze
    _run_pairs(tmp_path, tmp_path / 'o2', *opts)
    for r in rows:
        a = (tmp_path / 'o1' / 'train' / 'hazy' / r['hazy']).read_bytes()
        assert a == (tmp_path / 'o2' / 'train' / 'hazy' / r['hazy']).read_bytes()
    make_haze_pairs.main(['--input', str(tmp_path / 'in'), '--output', str(tmp_path / 'o3'), '--seed', '8'] + opts)
    with open(tmp_path / 'o3' / 'train' / 'meta.csv') as f:
        assert [r['beta'] for r in csv.DictReader(f)] != [r['beta'] for r in rows]
    # refusing to overwrite a dataset
    with pytest.raises(FileExistsError, match='meta.csv'):
        _run_pairs(tmp_path, tmp_path / 'o1', *opts)


def test_haze_name_rule_formats_and_parses_in_one_place():
    from mixcl_arch.data.clip_data_util import GTNameMapper
    name = haze.haze_name('sub/c.0.5_x', 3, 0.876, 0.1234)
    assert name == 'sub/c.0.5_x_3_0.88_0.123'
    assert haze.clear_stem(name) == 'sub/c.0.5_x'  # underscores and dots of the clear stem survive
    assert haze.clear_stem('1_1_0.90179') is None  # an ITS name is not one of ours
    # the dataset's gt_name_rule 'haze_pairs' is the same rule
    assert GTNameMapper('haze_pairs')(name) == ['sub/c.0.5_x', 'c.0.5_x']


def test_make_haze_pairs_uses_depth_file_exactly(tmp_path):
    (tmp_path / 'in').mkdir()
    (tmp_path / 'depth').mkdir()
    cv2.imwrite(str(tmp_path / 'in' / 'flat.png'), np.full((6, 8, 3), 64, np.uint8))
    disp = np.full((6, 8), 20.0, np.float32)
    disp[:, 4:] = 60.0
    disp[0, 0] = np.inf
    haze.write_pfm(str(tmp_path / 'depth' / 'flat.pfm'), disp)
    make_haze_pairs.main([
        '--input', str(tmp_path / 'in'), '--output', str(tmp_path / 'o'), '--domain', 'indoor', '--depth-dir',
        str(tmp_path / 'depth'), '--depth-kind', 'disparity', '--focal', '100', '--baseline', '10', '--doffs', '20',
        '--versions', '1', '--require-depth'
    ])
    with open(tmp_path / 'o' / 'train' / 'meta.csv') as f:
        row = next(csv.DictReader(f))
    assert row['depth_source'] == 'disparity:flat.pfm'
    beta, A = float(row['beta']), float(row['A'])
    hazy = cv2.imread(str(tmp_path / 'o' / 'train' / 'hazy' / row['hazy']))[..., ::-1].astype(np.float32) / 255
    # depth 1000/40 = 25 on the left, 1000/80 = 12.5 on the right; 'max' normalisation -> 1.0 and 0.5 (indoor)
    for col, d in ((1, 1.0), (6, 0.5)):
        t = np.exp(-beta * d)
        expect = 64 / 255 * t + A * (1 - t)
        assert abs(hazy[3, col, 0] - expect) < 1.5 / 255


def test_make_haze_pairs_bad_input(tmp_path):
    (tmp_path / 'empty').mkdir()
    with pytest.raises(ValueError, match='No images found'):
        make_haze_pairs.main(['--input', str(tmp_path / 'empty'), '--output', str(tmp_path / 'o'), '--domain',
                              'indoor'])
    (tmp_path / 'bad').mkdir()
    (tmp_path / 'bad' / 'broken.png').write_bytes(b'not an image')
    with pytest.raises(ValueError, match='broken.png'):
        make_haze_pairs.main(['--input', str(tmp_path / 'bad'), '--output', str(tmp_path / 'o'), '--domain',
                              'indoor'])
    (tmp_path / 'in').mkdir()
    (tmp_path / 'depth').mkdir()
    _write_img(tmp_path / 'in' / 'x.png', h=10, w=12)
    np.save(tmp_path / 'depth' / 'x.npy', np.ones((10, 11), np.float32))
    with pytest.raises(ValueError, match=r'x\.npy.*x\.png'):
        make_haze_pairs.main(['--input', str(tmp_path / 'in'), '--output', str(tmp_path / 'o'), '--domain',
                              'indoor', '--depth-dir', str(tmp_path / 'depth')])
    with pytest.raises(ValueError, match='No domain'):
        make_haze_pairs.main(['--input', str(tmp_path / 'in'), '--output', str(tmp_path / 'o')])


def test_index_existing_its_and_dehazeformer_names(tmp_path):
    split = tmp_path / 'ITS' / 'train'
    for rel in ('GT/1.png', 'GT/22.png', 'hazy/1_1_0.90179.png', 'hazy/1_2_0.74.png', 'hazy/22_1_0.8.png'):
        (split / rel).parent.mkdir(parents=True, exist_ok=True)
        _write_img(split / rel, h=4, w=4)
    make_haze_pairs.main(['--index-existing', str(split), '--domain', 'indoor'])
    with open(split / 'meta.csv') as f:
        rows = {r['hazy']: r['gt'] for r in csv.DictReader(f)}
    assert rows == {'1_1_0.90179.png': '1.png', '1_2_0.74.png': '1.png', '22_1_0.8.png': '22.png'}
    # DehazeFormer layout: identical names on both sides win over the underscore rule
    same = tmp_path / 'R6K' / 'test'
    for rel in ('GT/0001_0.8_0.2.png', 'hazy/0001_0.8_0.2.png', 'GT/0001.png'):
        (same / rel).parent.mkdir(parents=True, exist_ok=True)
        _write_img(same / rel, h=4, w=4)
    make_haze_pairs.main(['--index-existing', str(same), '--domain', 'outdoor'])
    with open(same / 'meta.csv') as f:
        assert [(r['hazy'], r['gt']) for r in csv.DictReader(f)] == [('0001_0.8_0.2.png', '0001_0.8_0.2.png')]
    (split / 'hazy' / '5_1_0.9.png').write_bytes((split / 'hazy' / '1_2_0.74.png').read_bytes())
    with pytest.raises(FileNotFoundError, match='5_1_0.9.png'):
        make_haze_pairs.main(['--index-existing', str(split), '--domain', 'indoor', '--overwrite'])
