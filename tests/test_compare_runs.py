"""scripts/compare_runs.py on generated per-image CSVs (test.py, benchmark, reference formats) and image folders."""
import csv
import importlib.util
import json
import os.path as osp

import cv2
import numpy as np
import pytest

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
_spec = importlib.util.spec_from_file_location('compare_runs', osp.join(ROOT, 'scripts', 'compare_runs.py'))
cr = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cr)


def _rows(path):
    with open(path, newline='') as f:
        return list(csv.DictReader(f))


def _run(capsys, *args):
    rc = cr.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, (json.loads(out) if rc == 0 else None), err


def test_test_py_csv_against_reference_csv(tmp_path, capsys):
    # A: mixcl_arch.test's <dataset>_per_image.csv; B: the reference's headerless name,psnr,ssim rows
    a = tmp_path / 'a.csv'
    a.write_text('image,psnr,ssim\nimg1,30.0,0.9\nimg2,25.0,0.8\nimg3,28.5,0.85\nimg4,,0.7\nimg5,inf,1.0\n'
                 'only_a,20,0.5\n')
    b = tmp_path / 'b.csv'
    b.write_text('img1.png,28.0,0.88\nimg2.png,27.5,0.82\nimg3.png,28.0,0.84\nimg4.png,22,0.6\nimg5.png,inf,1.0\n'
                 'only_b.png,20,0.5\n')
    out = tmp_path / 'cmp' / 'diff.csv'
    rc, summary, _ = _run(capsys, '--a', a, '--b', b, '--out', out)
    assert rc == 0
    # img1 +2.0 better, img3 +0.5 same, img5 inf vs inf same (diff 0), img2 -2.5 worse; img4 has no A value
    assert (summary['better'], summary['worse'], summary['same']) == (1, 1, 2)
    assert (summary['images'], summary['only_a'], summary['only_b'], summary['no_value']) == (4, 1, 1, 1)
    assert summary['mean_diff'] == pytest.approx((2.0 - 2.5 + 0.5 + 0.0) / 4)
    assert summary['most_better'] == [['img1', 2.0]] and summary['most_worse'] == [['img2', -2.5]]
    rows = _rows(out)
    assert [r['image'] for r in rows] == ['img1', 'img3', 'img5', 'img2']
    assert [r['verdict'] for r in rows] == ['better', 'same', 'same', 'worse']
    assert float(rows[0]['diff']) == pytest.approx(2.0)
    # the threshold decides: at 0.4 dB img3 counts as better too; SSIM is another column
    rc, summary, _ = _run(capsys, '--a', a, '--b', b, '--out', out, '--threshold', 0.4)
    assert summary['better'] == 2
    rc, summary, _ = _run(capsys, '--a', a, '--b', b, '--out', out, '--metric', 'ssim', '--threshold', 0.05)
    # img4 has an SSIM on both sides (0.7 vs 0.6: better by 0.1); the others differ by at most 0.02
    assert (summary['better'], summary['worse'], summary['images']) == (1, 0, 5)
    assert [r['image'] for r in _rows(out) if r['verdict'] == 'better'] == ['img4']


def test_benchmark_results_two_methods(tmp_path, capsys):
    res = tmp_path / 'results.csv'
    lines = ['image,gt,domain,method,psnr,ssim,time_ms,height,width,config']
    for i, (p_dcp, p_lab) in enumerate([(20.0, 22.5), (21.0, 19.0), (18.0, 18.5)]):
        lines += [f'sub/h{i}.png,g{i}.png,,DCP,{p_dcp},0.8,1,8,8,x',
                  f'sub/h{i}.png,g{i}.png,,DCPlab,{p_lab},0.8,1,8,8,y']
    res.write_text('\n'.join(lines) + '\n')
    out = tmp_path / 'd.csv'
    rc, summary, _ = _run(capsys, '--a', res, '--method-a', 'DCPlab', '--b', res, '--method-b', 'DCP', '--out', out,
                          '--key', 'path')
    assert rc == 0 and (summary['better'], summary['worse'], summary['same']) == (1, 1, 1)
    assert {r['image']: r['verdict'] for r in _rows(out)} == {'sub/h0': 'better', 'sub/h1': 'worse', 'sub/h2': 'same'}
    rc, _, err = _run(capsys, '--a', res, '--b', res, '--method-b', 'DCP', '--out', tmp_path / 'e.csv')
    assert rc == 1 and "holds the methods ['DCP', 'DCPlab']" in err


def _write(path, img):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), img)


def test_image_folders_scored_against_gt(tmp_path, capsys):
    rng = np.random.default_rng(0)
    noise = {'a': [2, 20, 6], 'b': [12, 4, 6]}  # per image: A better, A worse, equal noise
    psnr = {'a': {}, 'b': {}}
    for i in range(3):
        gt = rng.integers(40, 216, (24, 30, 3)).astype(np.uint8)
        _write(tmp_path / 'GT' / f'im{i}.png', gt)
        for side in ('a', 'b'):
            img = np.clip(gt + rng.normal(0, noise[side][i], gt.shape), 0, 255).round().astype(np.uint8)
            _write(tmp_path / side / f'im{i}.bmp' if side == 'a' else tmp_path / side / f'im{i}.png', img)
            mse = np.mean((img.astype(np.float64) / 255 - gt.astype(np.float64) / 255)**2)
            psnr[side][f'im{i}'] = 10 * np.log10(1 / mse)
    out = tmp_path / 'diff.csv'
    rc, summary, _ = _run(capsys, '--a', tmp_path / 'a', '--b', tmp_path / 'b', '--gt', tmp_path / 'GT', '--out', out)
    assert rc == 0 and summary['images'] == 3
    rows = {r['image']: r for r in _rows(out)}
    for k in ('im0', 'im1', 'im2'):
        assert float(rows[k]['a']) == pytest.approx(psnr['a'][k], abs=1e-3)
        assert float(rows[k]['b']) == pytest.approx(psnr['b'][k], abs=1e-3)
        want = psnr['a'][k] - psnr['b'][k]
        assert rows[k]['verdict'] == ('better' if want > 1 else 'worse' if want < -1 else 'same')
    assert rows['im0']['verdict'] == 'better' and rows['im1']['verdict'] == 'worse'


def test_errors_and_foreign_outputs(tmp_path, capsys):
    a = tmp_path / 'a.csv'
    a.write_text('image,psnr\nx,30\n')
    rc, _, err = _run(capsys, '--a', a, '--b', tmp_path, '--out', tmp_path / 'o.csv')
    assert rc == 1 and 'give --gt DIR' in err
    rc, _, err = _run(capsys, '--a', a, '--b', a, '--metric', 'lpips', '--out', tmp_path / 'o.csv')
    assert rc == 1 and "needs columns image and 'lpips'" in err
    rc, _, err = _run(capsys, '--a', a, '--b', a, '--out', a)
    assert rc == 1 and 'is the same path as the input' in err and a.read_text() == 'image,psnr\nx,30\n'
    mine = tmp_path / 'mine.csv'
    mine.write_text('user data')
    rc, _, err = _run(capsys, '--a', a, '--b', a, '--out', mine)
    assert rc == 1 and 'not written by compare-runs' in err and mine.read_text() == 'user data'
    ok = tmp_path / 'ok.csv'
    assert _run(capsys, '--a', a, '--b', a, '--out', ok)[0] == 0
    assert _run(capsys, '--a', a, '--b', a, '--out', ok)[0] == 0  # its own file is replaced
