"""Damaged LMDBs (issue 12 item 8): a zero-byte or truncated ``data.mdb`` is an error at construction, never a signal.

Unchecked, a truncated ``data.mdb`` passes dataset construction and the first read past the end of the file kills
the process with SIGBUS (rc -7; DataLoader workers report "out of shared memory"); a zero-byte one fails later with
"Bad file descriptor". Every reader opens databases through ``mixcl_arch.data.lmdb_tools.open_lmdb`` /
``lmdb_env``, so each one is exercised here. Readers run in a child process, since the failure being guarded against
kills whatever process makes it.
"""
import json
import os
import os.path as osp
import re
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest

from mixcl_arch.data import lmdb_tools

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))

# builds the reader of each 'reader:variant' argument on DIR/variant (DIR = argv[1]), reads its first item and
# prints one JSON line; the last argument runs uncaught
_READERS = r'''
import importlib.util, json, os.path as osp, sys
import mixcl_arch
from mixcl_arch.data.clip_paired_image_dataset import CLIPPairedImageDataset
from mixcl_arch.data.transmission_patch_dataset import TransmissionPatchDataset
from mixcl_arch.data.lmdb_tools import verify_lmdb


def script(name):
    spec = importlib.util.spec_from_file_location(name, osp.join('scripts', name + '.py'))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def clip(d):
    ds = CLIPPairedImageDataset({'dataroot_lq': osp.join(d, 'hazy.lmdb'), 'dataroot_gt': osp.join(d, 'GT.lmdb'),
                                 'io_backend': {'type': 'lmdb'}, 'phase': 'train', 'gt_size': 16})
    return lambda: ds[0]['lq'].shape


def transmission(d):
    ds = TransmissionPatchDataset({'dataroot_gt': osp.join(d, 'GT.lmdb'), 'io_backend': {'type': 'lmdb'},
                                   'patch_size': 16, 'patches_per_image': 1})
    return lambda: ds[0]['lq'].shape


def benchmark(d):
    dataset, items = script('benchmark_quality').open_pairs(d)
    return lambda: dataset[items[0]['index']]['lq'].shape


def features(d):
    mod = script('extract_clip_features')
    items, is_lmdb = mod.list_keys(osp.join(d, 'hazy.lmdb'))
    return lambda: mod._Images(osp.join(d, 'hazy.lmdb'), items, is_lmdb, lambda pil: pil.size)[0]


def verify(d):
    n = verify_lmdb(osp.join(d, 'hazy.lmdb'), progress=False)
    return lambda: n


for case in sys.argv[2:-1]:
    reader, variant = case.split(':')
    out = {'case': case, 'constructed': False}
    try:
        read = globals()[reader](osp.join(sys.argv[1], variant))
        out['constructed'] = True
        out['read'] = repr(read())
    except Exception as err:
        out['error'] = f'{type(err).__name__}: {err}'
    print(json.dumps(out), flush=True)
# the last case runs uncaught: it must end the process with Python's error exit (rc 1), as a user would see it
reader, variant = sys.argv[-1].split(':')
globals()[reader](osp.join(sys.argv[1], variant))()
print('constructed and read', flush=True)
'''

READERS = ('clip', 'transmission', 'benchmark', 'features', 'verify')
# the database each reader opens first (the one its error must name)
FIRST_DB = {'clip': 'hazy', 'transmission': 'GT', 'benchmark': 'hazy', 'features': 'hazy', 'verify': 'hazy'}
# damaged data.mdb -> the error's wording
DAMAGE = {'truncated': 'is truncated', 'cut_tail': 'is truncated', 'empty': r'is empty \(0 bytes\)',
          'stub': 'cannot be opened as an LMDB'}


@pytest.fixture(scope='module')
def databases(tmp_path_factory):
    """ROOT/intact/{hazy,GT}.lmdb made by make_lmdb_from_folder, and a copy per DAMAGE variant with both data.mdb
    files damaged. Returns (ROOT, page size, pages used)."""
    root = tmp_path_factory.mktemp('lmdb_safety')
    for sub in ('hazy', 'GT'):
        (root / 'src' / sub).mkdir(parents=True)
        for i in range(4):  # noise PNGs of ~6 KB: each value spans overflow pages, 11 pages in all
            img = (np.random.default_rng(i).random((40, 48, 3)) * 255).astype(np.uint8)
            assert cv2.imwrite(str(root / 'src' / sub / f'{i:04d}.png'), img)
        lmdb_tools.make_lmdb_from_folder(str(root / 'src' / sub), str(root / 'intact' / f'{sub}.lmdb'),
                                         progress=False)
    env = lmdb_tools.open_lmdb(str(root / 'intact' / 'hazy.lmdb'))
    psize, pages = env.stat()['psize'], env.info()['last_pgno'] + 1
    env.close()
    assert pages >= 6 and osp.getsize(root / 'intact' / 'hazy.lmdb' / 'data.mdb') == pages * psize
    sizes = {'truncated': 3 * psize, 'cut_tail': pages * psize - psize // 2, 'empty': 0, 'stub': 100}
    for variant, size in sizes.items():
        for sub in ('hazy', 'GT'):
            db = root / variant / f'{sub}.lmdb'
            shutil.copytree(root / 'intact' / f'{sub}.lmdb', db)
            os.truncate(db / 'data.mdb', size)
    return root, psize, pages


def _run(code, *args):
    env = dict(os.environ, OMP_NUM_THREADS='1')
    return subprocess.run([sys.executable, '-c', code, *map(str, args)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)


def test_damaged_lmdbs_fail_every_reader_at_construction_with_an_error_exit(databases):
    root, psize, pages = databases
    cases = [f'{r}:{v}' for r in READERS for v in ('intact', *DAMAGE)]
    proc = _run(_READERS, root, *cases, 'clip:truncated')
    # a normal Python error exit from the last, uncaught case; -7 is SIGBUS
    assert proc.returncode == 1, f'rc {proc.returncode}\n{proc.stdout}\n{proc.stderr}'
    lines = proc.stdout.splitlines()
    assert 'constructed and read' not in lines
    truncated = osp.join(root, 'truncated', 'hazy.lmdb', 'data.mdb')
    assert proc.stderr.rstrip().endswith(f'ValueError: {truncated} is truncated: {3 * psize} bytes, but the database '
                                         f'uses {pages} pages of {psize} bytes ({pages * psize} bytes): copy it '
                                         'again or rebuild it with scripts/create_lmdb.py')
    results = {r['case']: r for r in map(json.loads, lines)}
    assert sorted(results) == sorted(cases)
    for reader in READERS:
        ok = results[f'{reader}:intact']  # the check accepts a whole database, shared by all readers
        assert 'error' not in ok and ok['read'], ok
        for variant, wording in DAMAGE.items():
            res = results[f'{reader}:{variant}']
            assert not res['constructed'], res  # caught when the reader is built, not at the first read
            data = osp.join(root, variant, f'{FIRST_DB[reader]}.lmdb', 'data.mdb')
            assert res['error'].startswith(f'ValueError: {data} '), res
            assert re.search(wording, res['error']), res


def test_open_lmdb_names_a_missing_data_file(tmp_path):
    (tmp_path / 'x.lmdb').mkdir()
    with pytest.raises(FileNotFoundError, match=r'x\.lmdb/data\.mdb not found'):
        lmdb_tools.open_lmdb(str(tmp_path / 'x.lmdb'))
