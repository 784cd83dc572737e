"""Benchmark harness on a tiny generated set: the three outputs, per-domain rows, resume, LMDB, bad input."""
import csv
import importlib.util
import math
import os
import os.path as osp

import mixcl_arch  # noqa: F401  (patches basicsr first)
import cv2
import numpy as np
import pytest
import torch
import yaml

from mixcl_arch.archs.aodnet_arch import AODNet
from mixcl_arch.utils.checkpoint import atomic_torch_save

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
_spec = importlib.util.spec_from_file_location('benchmark_quality', osp.join(ROOT, 'scripts', 'benchmark_quality.py'))
bq = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bq)

DOMAINS = ['indoor', 'outdoor', 'indoor']


def _make_set(root, with_csv=True, size=(40, 48)):
    """3 pairs from skimage photos with constant haze; with a pair CSV the hazy names differ from the GT names."""
    from skimage import data
    h, w = size
    os.makedirs(osp.join(root, 'hazy'))
    os.makedirs(osp.join(root, 'GT'))
    rows = []
    for i, src in enumerate([data.astronaut(), data.coffee(), data.chelsea()]):
        gt = cv2.resize(src, (w, h), interpolation=cv2.INTER_AREA).astype(np.float32) / 255
        t = 0.5 + 0.1 * i
        hazy = gt * t + 0.9 * (1 - t)
        gt_name = f'img{i}.png'
        hazy_name = f'img{i}_{t:.1f}.png' if with_csv else gt_name
        cv2.imwrite(osp.join(root, 'GT', gt_name), (gt[..., ::-1] * 255).round().astype(np.uint8))
        cv2.imwrite(osp.join(root, 'hazy', hazy_name), (hazy[..., ::-1] * 255).round().astype(np.uint8))
        rows.append((hazy_name, gt_name, DOMAINS[i]))
    if with_csv:
        with open(osp.join(root, 'meta.csv'), 'w', newline='') as f:
            wr = csv.writer(f)
            wr.writerow(['hazy', 'gt', 'domain', 'beta', 'A', 'depth_source'])
            for r in rows:
                wr.writerow(list(r) + ['1.0', '0.9', 'constant'])
    return rows


def _aod_checkpoint(tmp_path):
    torch.manual_seed(0)
    net = AODNet()
    ckpt = str(tmp_path / 'aod.pth')
    atomic_torch_save({'params': net.state_dict()}, ckpt)
    opt = str(tmp_path / 'aod.yml')
    with open(opt, 'w') as f:
        yaml.safe_dump({'network_g': {'type': 'AODNet', 'data_range': 'unit'}}, f)
    return net, ckpt, opt


def _read(path):
    with open(path, newline='') as f:
        return list(csv.DictReader(f))


def test_harness_writes_results_summary_figure_and_resumes(tmp_path):
    data_root = str(tmp_path / 'test')
    rows = _make_set(data_root)
    net, ckpt, opt = _aod_checkpoint(tmp_path)
    out = str(tmp_path / 'bench')
    base = ['--data', data_root, '--out', out, '--quiet', '--figure', '2', '--macs-size', '32',
            '--method', 'name=Hazy,method=hazy', '--method', 'name=DCP,method=dcp,gf_radius=8']
    bq.main(base + ['--save-images', '--method', f'name=AOD,method=net,weights={ckpt},opt={opt}'])

    res = _read(osp.join(out, 'results.csv'))
    assert len(res) == 3 * 3
    assert {(r['image'], r['method']) for r in res} == {(h, m) for h, _, _ in rows for m in ('Hazy', 'DCP', 'AOD')}
    # the hazy row's PSNR is the PSNR of the stored hazy PNG against the GT PNG
    hz = cv2.imread(osp.join(data_root, 'hazy', rows[0][0])).astype(np.float64) / 255
    gt = cv2.imread(osp.join(data_root, 'GT', rows[0][1])).astype(np.float64) / 255
    want = 10 * math.log10(1 / ((hz - gt)**2).mean())
    got = [r for r in res if r['image'] == rows[0][0] and r['method'] == 'Hazy'][0]
    assert abs(float(got['psnr']) - want) < 1e-3
    assert got['domain'] == 'indoor' and int(got['height']) == 40 and int(got['width']) == 48
    # DCP improves on the hazy input for this constant haze
    mean = {m: np.mean([float(r['psnr']) for r in res if r['method'] == m]) for m in ('Hazy', 'DCP')}
    assert mean['DCP'] > mean['Hazy']

    summ = _read(osp.join(out, 'summary.csv'))
    assert [(s['method'], s['domain']) for s in summ] == [
        (m, d) for m in ('Hazy', 'DCP', 'AOD') for d in ('all', 'indoor', 'outdoor')]
    aod_all = summ[6]
    assert int(aod_all['params']) == 1761 and int(aod_all['macs_256']) == 1746 * 32 * 32
    assert int(summ[0]['images']) == 3 and int(summ[1]['images']) == 2 and int(summ[2]['images']) == 1
    indoor = [float(r['psnr']) for r in res if r['method'] == 'DCP' and r['domain'] == 'indoor']
    assert abs(float(summ[4]['psnr']) - np.mean(indoor)) < 1e-3
    md = open(osp.join(out, 'summary.md')).read()
    assert '| AOD | all | 3 |' in md and '1.76K' in md and '| DCP | outdoor | 1 |' in md

    # saved outputs: the AOD-Net one equals the net applied to the hazy PNG (up to 8-bit rounding)
    saved = cv2.imread(osp.join(out, 'images', 'AOD', rows[1][0]))[..., ::-1].astype(np.float32) / 255
    x = torch.from_numpy(cv2.imread(osp.join(data_root, 'hazy', rows[1][0]))[..., ::-1].copy()).float() / 255
    with torch.no_grad():
        ref = net(x.permute(2, 0, 1)[None]).clamp(0, 1)[0].permute(1, 2, 0).numpy()
    assert np.abs(saved - ref).max() <= 1 / 255 + 1e-6

    fig = cv2.imread(osp.join(out, 'figure.png'))
    assert fig is not None and fig.shape[0] == 2 * (160 + 36 + 6)  # 2 rows of label bar + cell + gap
    assert fig.shape[1] > 5 * 160  # hazy | 3 methods | GT

    # resume: mark an existing row, add a method; only the new method is computed, old rows kept verbatim
    res[0]['time_ms'] = '12345.0'
    bq.write_csv(res, bq.RESULT_FIELDS, osp.join(out, 'results.csv'))
    bq.main(base + ['--method', 'name=DCPmean,method=dcp,atmo_mode=mean'])
    res2 = _read(osp.join(out, 'results.csv'))
    assert len(res2) == 3 * 4 and res2[0]['time_ms'] == '12345.0'
    assert sum(r['method'] == 'DCPmean' for r in res2) == 3
    summ2 = _read(osp.join(out, 'summary.csv'))
    assert [s['method'] for s in summ2 if s['domain'] == 'all'] == ['Hazy', 'DCP', 'DCPmean']
    # --no-resume recomputes (the marked time disappears)
    bq.main(base + ['--no-resume', '--figure', '0'])
    res3 = _read(osp.join(out, 'results.csv'))
    assert len(res3) == 6 and all(r['time_ms'] != '12345.0' for r in res3)


def test_same_name_pairs_lmdb_and_methods_yaml(tmp_path):
    from mixcl_arch.data.lmdb_tools import make_lmdb_from_folder
    folder = str(tmp_path / 'folder')
    _make_set(folder, with_csv=False)
    lmdb_root = str(tmp_path / 'lmdb')
    os.makedirs(lmdb_root)
    for sub in ('hazy', 'GT'):
        make_lmdb_from_folder(osp.join(folder, sub), osp.join(lmdb_root, f'{sub}.lmdb'), progress=False)
    methods = str(tmp_path / 'methods.yml')
    with open(methods, 'w') as f:
        yaml.safe_dump({'methods': [{'name': 'DCP', 'method': 'dcp', 'params': {'gf_radius': 8}}]}, f)
    outs = {}
    for name, root in (('disk', folder), ('lmdb', lmdb_root)):
        out = str(tmp_path / f'out_{name}')
        res = bq.run(bq.parse_args(['--data', root, '--out', out, '--quiet', '--methods-yaml', methods,
                                    '--figure', 'img1']))
        assert res['rows'] == 3 and osp.isfile(res['figure'])
        assert [s['domain'] for s in res['summary']] == ['all']  # no domain labels: no per-domain rows
        outs[name] = {r['image'].split('.')[0]: r['psnr'] for r in _read(res['results'])}
    assert outs['disk'] == outs['lmdb']  # the same pixels through both backends


def test_bad_inputs(tmp_path):
    data_root = str(tmp_path / 'test')
    _make_set(data_root, with_csv=False)
    with pytest.raises(ValueError, match='key=value'):
        bq.parse_method_spec('name=x,dcp')
    with pytest.raises(ValueError, match='unknown method'):
        bq.parse_method_spec('name=x,method=magic')
    with pytest.raises(FileNotFoundError, match='weights file not found'):
        bq.parse_method_spec('name=x,method=net,weights=/nonexistent/w.pth')
    with pytest.raises(ValueError, match='needs weights'):
        bq.parse_method_spec('method=net')
    with pytest.raises(ValueError, match='Duplicate'):
        bq.load_methods(bq.parse_args(['--data', 'x', '--out', 'y', '--method', 'method=dcp', '--method',
                                       'method=dcp']))
    # pairs come from the registered dataset, which checks them all before any method runs
    dataset, items = bq.open_pairs(data_root)
    assert [it['image'] for it in items] == ['img0.png', 'img1.png', 'img2.png'] and len(dataset) == 3
    cv2.imwrite(osp.join(data_root, 'GT', 'img1.png'), np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match='Size mismatch: img1.png 48x40 vs img1.png 8x8'):
        bq.open_pairs(data_root)[0][1]
    os.remove(osp.join(data_root, 'GT', 'img2.png'))
    with pytest.raises(ValueError, match='have no GT'):
        bq.open_pairs(data_root)
    with pytest.raises(ValueError, match=r'not found.*img3\.png'):
        bq.open_pairs(data_root, _write_meta(tmp_path, 'img3.png'))
    with pytest.raises(FileNotFoundError, match='hazy/ and GT/'):
        bq.open_pairs(str(tmp_path))
    with pytest.raises(ValueError, match=r"dcp: unknown key\(s\) \['radius'\]"):
        bq.main(['--data', data_root, '--meta', _write_meta(tmp_path), '--out', str(tmp_path / 'o'), '--quiet',
                 '--method', 'method=dcp,radius=3'])


def _write_meta(tmp_path, name='img0.png'):
    path = str(tmp_path / 'pairs.csv')
    with open(path, 'w') as f:
        f.write(f'hazy,gt\n{name},{name}\n')
    return path


def test_resume_recomputes_a_method_whose_configuration_changed(tmp_path):
    root = str(tmp_path / 'set')
    _make_set(root)
    out = str(tmp_path / 'bench')
    common = ['--data', root, '--out', out, '--quiet', '--figure', '0']
    bq.main(common + ['--method', 'name=DCP,method=dcp,omega=0.95,gf_radius=4'])
    first = {r['image']: r['psnr'] for r in _read(osp.join(out, 'results.csv'))}
    bq.main(common + ['--method', 'name=DCP,method=dcp,omega=0.3,gf_radius=4'])
    rows = _read(osp.join(out, 'results.csv'))
    assert len(rows) == 3 and len({r['config'] for r in rows}) == 1
    assert all(first[r['image']] != r['psnr'] for r in rows), 'old rows of another omega were reused'
    fresh = str(tmp_path / 'fresh')
    bq.main(['--data', root, '--out', fresh, '--quiet', '--figure', '0', '--method',
             'name=DCP,method=dcp,omega=0.3,gf_radius=4'])
    assert {r['image']: r['psnr'] for r in rows} == {r['image']: r['psnr'] for r in _read(osp.join(fresh,
                                                                                                   'results.csv'))}


def test_lmdb_split_with_a_pair_csv_reports_the_csv_names_and_the_folder_pixels(tmp_path):
    from mixcl_arch.data.lmdb_tools import make_lmdb_from_folder
    folder = str(tmp_path / 'folder')
    rows = _make_set(folder)
    lmdb_root = str(tmp_path / 'lmdb')
    os.makedirs(lmdb_root)
    for sub in ('hazy', 'GT'):
        make_lmdb_from_folder(osp.join(folder, sub), osp.join(lmdb_root, f'{sub}.lmdb'), progress=False)
    disk, disk_items = bq.open_pairs(folder)
    lmdb, lmdb_items = bq.open_pairs(lmdb_root, osp.join(folder, 'meta.csv'))
    # results.csv names and domains as the CSV spells them (dotted stems such as img0_0.5.png stay whole)
    want = [{'image': h, 'gt': g, 'domain': d, 'index': i} for i, (h, g, d) in enumerate(rows)]
    assert disk_items == want and lmdb_items == want
    for i in range(len(rows)):
        assert torch.equal(disk[i]['lq'], lmdb[i]['lq']) and torch.equal(disk[i]['gt'], lmdb[i]['gt'])
    m = {'name': 'DCP'}
    assert bq.image_path('o', m, lmdb_items[0]) == osp.join('o', 'images', 'DCP', 'img0_0.5.png')
