"""Issue 12, writers and per-file limits: no writer destroys an input or a file it did not write, oversized /
unreadable images are skipped before decoding with a summary and a non-zero exit status, and the smaller CLI / data
problems (parent output folder, --suffix names, BOM CSVs, foreign feature stores)."""
import importlib.util
import os
import struct
import zlib

import cv2
import numpy as np
import pytest
import torch

from mixcl_arch.archs.mixdehazenet_arch import MixCLDehazeNet, MixDehazeNet
from mixcl_arch.data.clip_data_util import read_pair_csv
from mixcl_arch.utils.image_io import decode_image
from mixcl_arch.dehaze import main as dehaze

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(embed_dims=[8, 16, 16, 16, 8], depths=[1, 1, 1, 1, 1])

pytestmark = pytest.mark.usefixtures('one_thread')


def _script(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, 'scripts', f'{name}.py'))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _png(path, value=100, size=(12, 10)):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    assert cv2.imwrite(str(path), rng.integers(0, 255, size + (3,), dtype=np.uint8))
    return path.read_bytes()


def _chunk(kind, data):
    return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))


def bomb_png(width=30000, height=30000):
    """A 74-byte PNG whose IHDR declares ``width`` x ``height`` 8-bit RGB pixels (2.7 GB once decoded)."""
    data = (b'\x89PNG\r\n\x1a\n' + _chunk(b'IHDR', struct.pack('>IIBBBBB', width, height, 8, 2, 0, 0, 0))
            + _chunk(b'IDAT', zlib.compress(b'\x00' * 778, 9)) + _chunk(b'IEND', b''))
    assert len(data) == 74
    return data


def _summary(out):
    import json
    line = [ln for ln in out.splitlines() if ln.startswith('summary: ')][-1]
    return json.loads(line[len('summary: '):])


@pytest.fixture()
def imdecode_spy(monkeypatch):
    """Records every buffer cv2.imdecode receives; a 30000x30000 header makes it raise MemoryError like the 2.7 GB
    allocation does on a small machine (without allocating), and so does any buffer listed in ``oom``."""
    seen, oom = [], []
    real = cv2.imdecode

    def spy(buf, flags):
        data = bytes(np.asarray(buf, np.uint8))
        seen.append(data)
        if data[16:24] == struct.pack('>II', 30000, 30000) or data in oom:
            raise MemoryError('cannot allocate 2700000000 bytes')
        return real(buf, flags)

    monkeypatch.setattr(cv2, 'imdecode', spy)
    return seen, oom


# --------------------------------------------------------------------------------------- per-file limits (item 7)
def test_decompression_bomb_is_skipped_before_decoding_and_the_run_goes_on(tmp_path, imdecode_spy, capsys):
    seen, _ = imdecode_spy
    d = tmp_path / 'in'
    _png(d / 'a.png', 1)
    _png(d / 'c.png', 3)
    (d / 'b_bomb.png').write_bytes(bomb_png())
    rc = dehaze(['-i', str(d), '-o', str(tmp_path / 'out'), '--method', 'hazy'])
    cap = capsys.readouterr()
    s = _summary(cap.out)
    assert rc == 1 and (s['processed'], s['failed']) == (2, 1)
    assert 'b_bomb.png' in cap.out and '30000x30000' in cap.out and 'exceeds' in cap.out
    assert bomb_png() not in seen  # OpenCV never saw it
    assert (tmp_path / 'out' / 'c.png').is_file()  # images after the bomb were processed


def test_out_of_memory_image_is_skipped_and_the_summary_prints(tmp_path, imdecode_spy, capsys):
    _, oom = imdecode_spy
    d = tmp_path / 'in'
    _png(d / 'a.png', 1)
    oom.append(_png(d / 'b.png', 2))
    _png(d / 'c.png', 3)
    rc = dehaze(['-i', str(d), '-o', str(tmp_path / 'out'), '--method', 'hazy'])
    cap = capsys.readouterr()
    assert rc == 1 and _summary(cap.out)['processed'] == 2 and 'out of memory' in cap.out


def test_summary_prints_even_when_the_run_is_interrupted(tmp_path, monkeypatch, capsys):
    d = tmp_path / 'in'
    _png(d / 'a.png', 1)
    _png(d / 'b.png', 2)
    real = cv2.imdecode
    calls = []

    def interrupt(buf, flags):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(buf, flags)

    monkeypatch.setattr(cv2, 'imdecode', interrupt)
    with pytest.raises(KeyboardInterrupt):
        dehaze(['-i', str(d), '-o', str(tmp_path / 'out'), '--method', 'hazy'])
    assert _summary(capsys.readouterr().out)['processed'] == 1


def test_exit_status_is_nonzero_when_any_image_failed(tmp_path, capsys):
    d = tmp_path / 'in'
    _png(d / 'a.png', 1)
    (d / 'b.png').write_bytes(b'\x89PNG\r\n\x1a\n truncated')
    assert dehaze(['-i', str(d), '-o', str(tmp_path / 'out'), '--method', 'hazy']) == 1
    s = _summary(capsys.readouterr().out)
    assert (s['processed'], s['failed']) == (1, 1)


def test_max_pixels_option(tmp_path, capsys):
    d = tmp_path / 'in'
    _png(d / 'a.png', 1, (20, 20))
    assert dehaze(['-i', str(d), '-o', str(tmp_path / 'o1'), '--method', 'hazy', '--max-pixels', '399']) == 1
    assert 'exceeds the limit' in capsys.readouterr().out
    assert dehaze(['-i', str(d), '-o', str(tmp_path / 'o2'), '--method', 'hazy', '--max-pixels', '400']) == 0
    with pytest.raises(SystemExit):
        dehaze(['-i', str(d), '-o', str(tmp_path / 'o3'), '--method', 'hazy', '--max-pixels', '0'])


def test_header_size_reads_every_format_and_refuses_crafted_headers(monkeypatch):
    import io

    from PIL import Image

    from mixcl_arch.utils.image_io import _max_pixels_from_env, check_pixels, header_size
    img = np.random.default_rng(0).integers(0, 255, (37, 53, 3), dtype=np.uint8)
    for ext in ('.png', '.jpg', '.webp', '.bmp', '.tif', '.ppm'):
        assert header_size(cv2.imencode(ext, img)[1]) == (53, 37), ext
    assert header_size(cv2.imencode('.pgm', img[..., 0])[1]) == (53, 37)
    assert header_size(cv2.imencode('.tif', img.astype(np.uint16))[1]) == (53, 37)
    for fmt, kw in (('TIFF', {'big_tiff': True}), ('WEBP', {'lossless': True}), ('JPEG', {'progressive': True})):
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, fmt, **kw)
        assert header_size(buf.getvalue()) == (53, 37), fmt
    buf = io.BytesIO()
    Image.fromarray(np.dstack([img, img[..., :1]])).save(buf, 'WEBP')  # RGBA lossy: the VP8X header
    assert buf.getvalue()[12:16] == b'VP8X' and header_size(buf.getvalue()) == (53, 37)
    assert header_size(b'not an image at all') is None and header_size(b'\x89PNG\r\n\x1a\n') is None

    # the same files declaring 30000 x 30000: refused from the header
    jpg = bytearray(cv2.imencode('.jpg', img)[1].tobytes())
    sof = jpg.index(b'\xff\xc0')
    jpg[sof + 5:sof + 9] = struct.pack('>HH', 30000, 30000)
    bmp = bytearray(cv2.imencode('.bmp', img)[1].tobytes())
    bmp[18:26] = struct.pack('<ii', 30000, -30000)  # negative height: a top-down bitmap
    for data in (bomb_png(), bytes(jpg), bytes(bmp)):
        assert header_size(data) == (30000, 30000)
        with pytest.raises(ValueError, match='900.0 MP exceeds'):
            check_pixels(data, 'x')
    with pytest.raises(ValueError, match='cannot read the image size'):
        check_pixels(b'GIF89a....', 'x.gif')

    monkeypatch.setenv('MIXCL_MAX_PIXELS', '5e6')
    assert _max_pixels_from_env() == 5_000_000
    monkeypatch.setenv('MIXCL_MAX_PIXELS', 'lots')
    with pytest.raises(ValueError, match='MIXCL_MAX_PIXELS'):
        _max_pixels_from_env()


def test_dataset_decoder_refuses_a_bomb_before_decoding(imdecode_spy):
    seen, _ = imdecode_spy
    with pytest.raises(ValueError, match='bomb.png.*exceeds'):
        decode_image(bomb_png(), 'bomb.png')
    assert not seen
    assert decode_image(cv2.imencode('.png', np.zeros((4, 6, 3), np.uint8))[1].tobytes()).shape == (4, 6, 3)


# ------------------------------------------------------------------------------------ CLI outputs (items 5, 10)
def test_compare_image_never_replaces_an_input(tmp_path, capsys):
    src = tmp_path / 'p' / 'compare' / 'a.png'
    before = _png(src, 1)
    # one file: its compare image OUT/compare/a.png is the input itself
    assert dehaze(['-i', str(src), '-o', str(tmp_path / 'p' / 'a.png'), '--method', 'hazy', '--compare']) == 1
    assert src.read_bytes() == before and 'compare image' in capsys.readouterr().out
    # a folder whose parent is the output folder: the same clash
    if (tmp_path / 'p' / 'a.png').exists():  # written by the code before the fix
        os.remove(tmp_path / 'p' / 'a.png')
    assert dehaze(['-i', str(src.parent), '-o', str(tmp_path / 'p'), '--method', 'hazy', '--compare']) == 1
    assert src.read_bytes() == before and 'would replace its own input' in capsys.readouterr().out


def test_existing_compare_image_needs_overwrite_and_must_be_the_tools_own(tmp_path, capsys):
    d, out = tmp_path / 'in', tmp_path / 'out'
    _png(d / 'a.png', 1)
    theirs = _png(out / 'compare' / 'a.png', 9)
    args = ['-i', str(d), '-o', str(out), '--method', 'hazy', '--compare']
    assert dehaze(args) == 0  # skipped: the compare image exists
    assert (out / 'compare' / 'a.png').read_bytes() == theirs and not (out / 'a.png').exists()
    assert _summary(capsys.readouterr().out)['skipped_existing'] == 1
    assert dehaze(args + ['--overwrite']) == 1  # not written by the tool: kept even with --overwrite
    assert (out / 'compare' / 'a.png').read_bytes() == theirs
    assert 'not written by this tool' in capsys.readouterr().out
    os.remove(out / 'compare' / 'a.png')
    assert dehaze(args) == 0
    ours = (out / 'compare' / 'a.png').read_bytes()
    _png(d / 'a.png', 2)
    assert dehaze(args + ['--overwrite']) == 0  # its own output is replaced
    assert (out / 'compare' / 'a.png').read_bytes() != ours


def test_output_folder_that_is_a_parent_of_the_input(tmp_path, capsys):
    d = tmp_path / 'p' / 'in'
    _png(d / 'a.png', 1)
    assert dehaze(['-i', str(d), '-o', str(tmp_path / 'p'), '--method', 'hazy']) == 0
    assert (tmp_path / 'p' / 'a.png').is_file() and _summary(capsys.readouterr().out)['processed'] == 1
    assert dehaze(['-i', str(d), '-o', str(tmp_path / 'p'), '--method', 'hazy']) == 0  # re-run: nothing to redo
    assert _summary(capsys.readouterr().out)['skipped_existing'] == 1


def test_inputs_named_with_the_suffix_are_reported(tmp_path, capsys):
    d = tmp_path / 'in'
    _png(d / 'a.png', 1)
    _png(d / 'sky_d.png', 2)  # a real photo whose name happens to end with the suffix
    args = ['-i', str(d), '-o', str(d), '--method', 'hazy', '--suffix', '_d']
    assert dehaze(args) == 0
    cap = capsys.readouterr()
    assert 'sky_d.png' in cap.err and _summary(cap.out)['skipped_suffix'] == 1 and (d / 'a_d.png').is_file()
    assert dehaze(args) == 0  # a_d.png is a recorded output: not dehazed again, not reported as a suffix name
    cap = capsys.readouterr()
    by_suffix = [ln for ln in cap.err.splitlines() if 'ends with --suffix' in ln]
    assert len(by_suffix) == 1 and 'sky_d.png' in by_suffix[0] and 'outputs of this tool' in cap.err
    assert _summary(cap.out)['skipped_suffix'] == 1


def test_pair_csv_with_a_utf8_bom(tmp_path):
    path = tmp_path / 'meta.csv'
    path.write_bytes('hazy,gt,domain\na_1.png,a.png,outdoor\n'.encode('utf-8-sig'))
    assert read_pair_csv(str(path), need_domain=True) == [{'hazy': 'a_1.png', 'gt': 'a.png', 'domain': 'outdoor'}]


class _Payload:
    """Pickles to a call that creates a marker file: loading it must never run it."""
    marker = None

    def __reduce__(self):
        return (open, (self.marker, 'w'))


def test_foreign_feature_store_fails_clearly_without_running_code(tmp_path, capsys):
    torch.manual_seed(0)
    ckpt = tmp_path / 'net.pth'
    torch.save({'params': MixCLDehazeNet(**TINY, data_range='unit').state_dict()}, ckpt)
    payload = _Payload()
    payload.marker = str(tmp_path / 'ran')
    store = tmp_path / 'foreign.pt'
    torch.save({'domain_text': payload}, store)
    d = tmp_path / 'in'
    _png(d / 'a.png', 1)
    rc = dehaze(['-i', str(d), '-o', str(tmp_path / 'o'), '--weights', str(ckpt), '--cond-fallback', 'outdoor',
                 '--feature-store', str(store)])
    err = capsys.readouterr().err
    assert rc == 1 and str(store) in err and 'cannot be read' in err
    assert not os.path.exists(payload.marker)


# ------------------------------------------------------------------------------------- script writers (item 6)
def test_make_haze_pairs_refuses_an_output_that_contains_its_input(tmp_path):
    mhp = _script('make_haze_pairs')
    photos = tmp_path / 'ds' / 'train' / 'GT'
    before = {n: _png(photos / n, i, (40, 30)) for i, n in enumerate(('a.png', 'b.png'))}
    cases = [(photos, tmp_path / 'ds'), (photos, photos), (photos, photos / 'pairs')]
    for inp, out in cases:
        for extra in ([], ['--overwrite']):
            with pytest.raises(ValueError, match='input'):
                mhp.main(['--input', str(inp), '--output', str(out), '--domain', 'outdoor', '--versions', '1',
                          '--max-size', '16'] + extra)
            assert {n: (photos / n).read_bytes() for n in before} == before
    assert sorted(os.listdir(photos)) == ['a.png', 'b.png']


def test_make_haze_pairs_overwrite_deletes_only_its_recorded_files(tmp_path):
    mhp = _script('make_haze_pairs')
    photos, out = tmp_path / 'photos', tmp_path / 'ds'
    _png(photos / 'a.png', 1, (20, 16))
    csv_path = tmp_path / 'domains.csv'
    csv_path.write_bytes('file,domain\na.png,indoor\n'.encode('utf-8-sig'))  # a BOM from a spreadsheet program
    args = ['--input', str(photos), '--output', str(out), '--domain-csv', str(csv_path), '--versions', '1']
    mhp.main(args)
    notes = out / 'notes.txt'
    notes.write_text('mine')
    mine = _png(out / 'train' / 'hazy' / 'mine.png', 5)
    with pytest.raises(FileExistsError, match='not written by make_haze_pairs'):
        mhp.main(args + ['--overwrite'])
    assert (out / 'train' / 'hazy' / 'mine.png').read_bytes() == mine and (out / 'train' / 'GT' / 'a.png').is_file()
    os.remove(out / 'train' / 'hazy' / 'mine.png')
    gt = out / 'train' / 'GT' / 'a.png'
    _png(gt, 7, (20, 16))  # a recorded file the user changed since is no longer the tool's
    with pytest.raises(FileExistsError, match='changed since'):
        mhp.main(args + ['--overwrite'])
    os.remove(gt)
    summary = mhp.main(args + ['--overwrite', '--seed', '3'])
    assert summary['splits']['train']['pairs'] == 1 and notes.read_text() == 'mine'
    assert len(os.listdir(out / 'train' / 'hazy')) == 1 and gt.is_file()


def test_convert_official_checkpoint_never_replaces_its_source(tmp_path):
    conv = _script('convert_official_checkpoint')
    src = tmp_path / 'official.pth'
    net = MixDehazeNet(**TINY)
    torch.save({'state_dict': {'module.' + k: v for k, v in net.state_dict().items()}, 'epoch': 1}, src)
    before = src.read_bytes()
    (tmp_path / 'link.pth').symlink_to(src)
    os.link(src, tmp_path / 'hard.pth')
    for dst in (src, tmp_path / 'link.pth', tmp_path / 'hard.pth'):
        with pytest.raises(ValueError, match='same path'):
            conv.main(['-i', str(src), '-o', str(dst), '--overwrite'])
        assert src.read_bytes() == before
    conv.main(['-i', str(src), '-o', str(tmp_path / 'converted.pth')])
    assert set(torch.load(tmp_path / 'converted.pth', weights_only=True)) == {'params'}


def test_make_demo_data_deletes_only_its_recorded_files(tmp_path):
    demo = _script('make_demo_data')
    out = tmp_path / 'data'
    args = ['--out', str(out), '--long-side', '24', '--versions', '1', '--test-versions', '1']
    demo.main(args)
    (out / 'precious.txt').write_text('keep me')
    (out / 'train' / 'notes.txt').write_text('keep me too')
    demo.main(args)  # a re-run rebuilds its own files and keeps the user's
    assert (out / 'precious.txt').read_text() == 'keep me'
    assert (out / 'train' / 'notes.txt').read_text() == 'keep me too'
    assert len(os.listdir(out / 'train' / 'hazy')) == 4
    intruder = _png(out / 'train' / 'hazy' / 'intruder.png', 3)
    with pytest.raises(FileExistsError, match='not made by make_demo_data'):
        demo.main(args)
    assert (out / 'train' / 'hazy' / 'intruder.png').read_bytes() == intruder
    assert (out / 'train' / 'meta.csv').is_file()  # nothing was deleted
    with pytest.raises(FileExistsError, match='not written by make_demo_data'):
        demo.main(['--standin-store', str(out / 'precious.txt')])
    assert (out / 'precious.txt').read_text() == 'keep me'


def test_create_lmdb_refuses_outputs_overlapping_its_inputs(tmp_path):
    create_lmdb = _script('create_lmdb')
    imgs = tmp_path / 'old.lmdb' / 'imgs'
    before = _png(imgs / 'a.png', 1)
    for lmdb in (imgs / 'inside.lmdb', tmp_path / 'old.lmdb'):  # --overwrite used to delete the images here
        with pytest.raises(ValueError, match='input'):
            create_lmdb.main(['--folder', str(imgs), '--lmdb', str(lmdb), '--overwrite', '--quiet'])
        assert (imgs / 'a.png').read_bytes() == before and os.listdir(imgs) == ['a.png']
    root = tmp_path / 'ds'
    for sub in ('hazy', 'GT'):
        _png(root / 'train' / sub / 'a.png', 2)
    with pytest.raises(ValueError, match='lies inside'):
        create_lmdb.main(['--root', str(root), '--out', str(root / 'train' / 'hazy'), '--quiet'])
    assert os.listdir(root / 'train' / 'hazy') == ['a.png']
    # an existing folder that is not an LMDB is never replaced
    other = tmp_path / 'other.lmdb'
    kept = _png(other / 'photo.png', 4)
    with pytest.raises(FileExistsError, match='not an LMDB folder'):
        create_lmdb.main(['--folder', str(imgs), '--lmdb', str(other), '--overwrite', '--quiet'])
    assert (other / 'photo.png').read_bytes() == kept
    create_lmdb.main(['--folder', str(imgs), '--lmdb', str(tmp_path / 'ok.lmdb'), '--quiet'])
    create_lmdb.main(['--folder', str(imgs), '--lmdb', str(tmp_path / 'ok.lmdb'), '--quiet', '--overwrite'])


def test_benchmark_quality_refuses_an_output_overlapping_the_data(tmp_path):
    bench = _script('benchmark_quality')
    data = tmp_path / 'test'
    for sub in ('hazy', 'GT'):
        _png(data / sub / 'a.png', 1)
    for out in (data, data / 'hazy' / 'bench', tmp_path):
        with pytest.raises(ValueError, match='--out'):
            bench.main(['--data', str(data), '--out', str(out), '--method', 'name=Hazy,method=hazy', '--quiet',
                        '--figure', '0'])
    assert sorted(os.listdir(data)) == ['GT', 'hazy'] and os.listdir(data / 'hazy') == ['a.png']


def test_extract_clip_features_refuses_a_store_inside_its_images(tmp_path, monkeypatch):
    monkeypatch.setenv('MIXCL_CLIP_OFFLINE', '1')
    extract = _script('extract_clip_features')
    d = tmp_path / 'hazy'
    _png(d / 'a.png', 1)
    with pytest.raises(ValueError, match='lies inside'):
        extract.main(['--dataroot', str(d), '--out', str(d / 'f.pt'), '--pretrained', str(tmp_path / 'none.pt')])
    assert os.listdir(d) == ['a.png']


# ---------------------------------------------------------------------------------------- the shared rules
def test_path_relation_sees_through_symlinks_and_hard_links(tmp_path):
    from mixcl_arch.utils.output_guard import check_outputs_apart, path_relation
    (tmp_path / 'a' / 'b').mkdir(parents=True)
    (tmp_path / 'f').write_text('x')
    os.link(tmp_path / 'f', tmp_path / 'g')
    (tmp_path / 'la').symlink_to(tmp_path / 'a')
    assert path_relation(tmp_path / 'a', tmp_path / 'la') == 'same'
    assert path_relation(tmp_path / 'f', tmp_path / 'g') == 'same'
    assert path_relation(tmp_path / 'la' / 'b' / 'new', tmp_path / 'a') == 'inside'
    assert path_relation(tmp_path, tmp_path / 'la' / 'b') == 'contains'
    assert path_relation(tmp_path / 'ab', tmp_path / 'a') is None  # a shared name prefix is not containment
    check_outputs_apart([tmp_path / 'ab'], [tmp_path / 'a', None])
    with pytest.raises(ValueError, match='contains the input'):
        check_outputs_apart([tmp_path], [tmp_path / 'f'])


def test_manifest_records_own_files_only(tmp_path):
    from mixcl_arch.utils.output_guard import MANIFEST_NAME, OutputManifest
    m = OutputManifest(tmp_path, 'tool')
    (tmp_path / 'sub').mkdir()
    for name in ('sub/a.txt', 'b.txt', 'user.txt'):
        (tmp_path / name).write_text(name)
    m.record(tmp_path / 'sub' / 'a.txt')
    m.record(tmp_path / 'b.txt')
    with open(tmp_path / MANIFEST_NAME, 'a') as f:
        f.write('{"path": "user.txt", "tool": "to')  # a line torn by a kill
    m2 = OutputManifest(tmp_path, 'tool')
    assert m2.owns(tmp_path / 'sub' / 'a.txt') and not m2.owns(tmp_path / 'user.txt')
    assert not OutputManifest(tmp_path, 'other').owns(tmp_path / 'b.txt')
    (tmp_path / 'b.txt').write_text('edited by the user')
    assert not m2.owns(tmp_path / 'b.txt')
    assert m2.foreign_files(tmp_path) == [str(tmp_path / 'b.txt'), str(tmp_path / 'user.txt')]
    assert m2.remove_recorded() == [str(tmp_path / 'sub' / 'a.txt')]
    assert sorted(os.listdir(tmp_path)) == [MANIFEST_NAME, 'b.txt', 'user.txt']  # emptied sub/ removed too
    with pytest.raises(ValueError, match='outside the output root'):
        m2.record(tmp_path.parent / 'elsewhere')


def test_make_haze_pairs_refuses_a_bomb_before_decoding(tmp_path, imdecode_spy):
    seen, _ = imdecode_spy
    (tmp_path / 'photos').mkdir()
    (tmp_path / 'photos' / 'bomb.png').write_bytes(bomb_png())
    with pytest.raises(ValueError, match='bomb.png.*exceeds'):
        _script('make_haze_pairs').main(['--input', str(tmp_path / 'photos'), '--output', str(tmp_path / 'ds'),
                                          '--domain', 'outdoor'])
    assert not seen


# ------------------------------------------------------- every writer goes through the manifest (remaining gaps)
def _standin_extract(tmp_path, out, *extra):
    """extract_clip_features.py on a one-image folder, by the stand-in route (DCP density, no CLIP weights)."""
    _png(tmp_path / 'hazy' / 'a.png', 1, (24, 24))
    return _script('extract_clip_features').main([
        '--dataroot', str(tmp_path / 'hazy'), '--out', str(out), '--density', '--density-source', 'dcp',
        '--standin-domain', 'outdoor', '--dcp-param', 'patch_radius=2', '--num-workers', '0', '--quiet', *extra])


def test_extract_clip_features_overwrite_replaces_only_its_own_store(tmp_path, capsys):
    from mixcl_arch.clip.store import FeatureStore
    from mixcl_arch.utils.output_guard import OutputManifest
    users = tmp_path / 'users.pt'
    users.write_bytes(b'a file of the user that happens to have the store name')
    with pytest.raises(FileExistsError, match='not written by extract_clip_features'):
        _standin_extract(tmp_path, users, '--overwrite')
    assert users.read_bytes() == b'a file of the user that happens to have the store name'

    out = tmp_path / 'store.pt'
    assert _standin_extract(tmp_path, out) == 0
    assert OutputManifest(tmp_path, 'extract_clip_features').owns(out) and 'a' in FeatureStore.load(str(out))
    assert _standin_extract(tmp_path, out) == 0  # resume: nothing new, the store stays its own
    assert _standin_extract(tmp_path, out, '--overwrite') == 0  # its own store is replaced
    os.utime(out, ns=(1, 1))  # "changed since": no longer the file the tool recorded
    with pytest.raises(FileExistsError, match='changed since'):
        _standin_extract(tmp_path, out, '--overwrite')
    capsys.readouterr()


def _bench_set(root, n=2):
    for i in range(n):
        for sub in ('hazy', 'GT'):
            _png(root / sub / f'img{i}.png', i, (16, 16))


def test_benchmark_quality_never_replaces_a_foreign_output(tmp_path, capsys):
    bench = _script('benchmark_quality')
    data, out = tmp_path / 'test', tmp_path / 'bench'
    _bench_set(data)
    base = ['--data', str(data), '--out', str(out), '--method', 'name=Hazy,method=hazy', '--quiet']
    out.mkdir()
    theirs = 'image,gt,domain,method,psnr,ssim,time_ms,height,width,config\nx.png,x.png,,Other,30,0.9,1,8,8,abc\n'
    (out / 'results.csv').write_text(theirs)  # a results file of the user's, with this script's columns
    for extra in ([], ['--no-resume']):
        with pytest.raises(FileExistsError, match='not written by benchmark_quality'):
            bench.main(base + extra)
        assert (out / 'results.csv').read_text() == theirs and not (out / 'summary.md').exists()
    os.remove(out / 'results.csv')

    bench.main(base + ['--save-images', '--figure', '1'])
    written = ['results.csv', 'summary.csv', 'summary.md', 'figure.png', 'images/Hazy/img0.png']
    assert all((out / name).is_file() for name in written)
    bench.main(base + ['--save-images', '--figure', '1', '--no-resume'])  # its own outputs are replaced
    for name in written[1:]:
        kept = (out / name).read_bytes()
        (out / name).write_bytes(kept + b' ')  # edited by hand since: not the tool's any more
        args = base + (['--save-images', '--no-resume'] if name.startswith('images') else ['--figure', '1'])
        with pytest.raises(FileExistsError, match=f'changed since.*{os.path.basename(name)}'):
            bench.main(args)
        assert (out / name).read_bytes() == kept + b' '
        (out / name).write_bytes(kept)
        os.remove(out / name)
    capsys.readouterr()


def test_make_haze_pairs_index_existing_never_replaces_a_foreign_meta_csv(tmp_path, capsys):
    mhp = _script('make_haze_pairs')
    split = tmp_path / 'ITS' / 'train'
    _png(split / 'GT' / '1.png', 1)
    _png(split / 'hazy' / '1_1_0.9.png', 2)
    shipped = 'hazy,gt\n1_1_0.9.png,1.png\n'
    (split / 'meta.csv').write_text(shipped)  # the pair list the dataset came with
    args = ['--index-existing', str(split), '--domain', 'indoor']
    for extra in ([], ['--overwrite']):
        with pytest.raises(FileExistsError, match='never replaced'):
            mhp.main(args + extra)
        assert (split / 'meta.csv').read_text() == shipped
    os.remove(split / 'meta.csv')
    mhp.main(args)
    with pytest.raises(FileExistsError, match='--overwrite'):
        mhp.main(args)
    mhp.main(args + ['--domain', 'outdoor', '--overwrite'])  # its own meta.csv is replaced
    assert read_pair_csv(str(split / 'meta.csv'))[0]['domain'] == 'outdoor'
    with pytest.raises(ValueError, match='same path'):  # the domain CSV it reads is never its output
        mhp.main(args + ['--domain-csv', str(split / 'meta.csv'), '--csv-file-col', 'hazy', '--overwrite'])
    capsys.readouterr()


# ------------------------------------------------------ the pixel limit guards every decoder (remaining gaps)
def test_decode_image_refuses_a_bomb_before_decoding(tmp_path, imdecode_spy):
    seen, _ = imdecode_spy
    (tmp_path / 'bomb.png').write_bytes(bomb_png())
    with pytest.raises(ValueError, match='bomb.png.*exceeds'):
        decode_image(str(tmp_path / 'bomb.png'))
    assert not seen
    _png(tmp_path / 'ok.png', 1, (5, 7))
    assert decode_image(str(tmp_path / 'ok.png'), max_pixels=35).shape == (5, 7, 3)
    with pytest.raises(ValueError, match='exceeds'):
        decode_image(str(tmp_path / 'ok.png'), max_pixels=34)


def test_benchmark_quality_refuses_a_bomb_before_decoding(tmp_path, imdecode_spy):
    seen, _ = imdecode_spy
    data = tmp_path / 'test'
    _bench_set(data, 1)
    (data / 'hazy' / 'img0.png').write_bytes(bomb_png())
    with pytest.raises(ValueError, match='img0.png.*exceeds'):
        _script('benchmark_quality').main(['--data', str(data), '--out', str(tmp_path / 'bench'), '--method',
                                           'name=Hazy,method=hazy', '--quiet', '--figure', '0'])
    assert bomb_png() not in seen


def test_transmission_patch_dataset_decodes_through_the_checked_decoder(tmp_path, monkeypatch, imdecode_spy):
    import mixcl_arch.utils.image_io as image_io
    from mixcl_arch.data.transmission_patch_dataset import TransmissionPatchDataset
    seen, _ = imdecode_spy
    big = _png(tmp_path / 'clean' / 'a.png', 1, (40, 40))
    opt = dict(dataroot_gt=str(tmp_path / 'clean'), io_backend=dict(type='disk'), phase='train', patch_size=16)
    monkeypatch.setattr(image_io, 'DEFAULT_MAX_PIXELS', 1599)  # MIXCL_MAX_PIXELS=1599 at import
    with pytest.raises(IOError, match='a.png: 40x40 .* exceeds'):
        TransmissionPatchDataset(opt)
    assert big not in seen
    monkeypatch.setattr(image_io, 'DEFAULT_MAX_PIXELS', 1600)
    np.random.seed(0)
    item = TransmissionPatchDataset(dict(opt, use_hflip=False))[0]
    rgb = cv2.imread(str(tmp_path / 'clean' / 'a.png'))[..., ::-1].astype(np.float32) / 255
    patch = item['clear'].permute(1, 2, 0).numpy()
    # the clear patch is an RGB crop of the image (the decoder's channel order is kept)
    assert any(np.allclose(patch, rgb[i:i + 16, j:j + 16]) for i in range(25) for j in range(25))


# ------------------------------------------------------------------------------ the opt-ins are documented
def test_docs_explain_every_code_running_opt_in():
    """docs/inference.md and docs/training.md name each opt-in that lets a file run code, in its section, with the
    danger spelled out; and each documented name is a real option (a renamed flag fails here, not in a user's run)."""
    from mixcl_arch.clip.prior import PRIOR_OPTION_KEYS
    from mixcl_arch.dehaze_args import parse_args
    from mixcl_arch.utils.checkpoint import SAVE_FORMATS

    def section(doc, title):
        with open(os.path.join(ROOT, 'docs', doc), encoding='utf-8') as f:
            text = f.read()
        start = text.index(f'## {title}')
        end = text.find('\n## ', start + 1)
        return text[start:end if end > 0 else len(text)]

    loading = section('inference.md', 'Loading safety')
    for flag, yaml_key in (('--allow-unsafe-pickle', 'path.allow_unsafe_pickle'),
                           ('--clip-torchscript', 'clip.torchscript')):
        assert f'**`{flag}`** (YAML: `{yaml_key}: true`)' in loading
        assert flag in section('inference.md', 'Options')
    assert loading.count('execute code') + loading.count('run any command') >= 2
    args = parse_args(['-i', 'x', '-o', 'y', '--weights', 'w.pth', '--allow-unsafe-pickle', '--clip-torchscript'])
    assert args.allow_unsafe_pickle and args.clip_torchscript

    keys = section('training.md', "Keys added to BasicSR's options")
    assert '| `path.save_format` | ' + ', '.join(f'`{f}`' + (' (default)' if f == 'pth' else '')
                                               for f in SAVE_FORMATS) + ' |' in keys
    for key in ('path.allow_unsafe_pickle', 'clip.torchscript'):
        assert f'| `{key}` | `false` (default), `true` | **dangerous** opt-in' in keys
    safety = section('training.md', 'Safety')
    assert all(k in safety for k in ('path.allow_unsafe_pickle: true', 'clip.torchscript: true',
                                     'path.save_format:'))
    assert 'torchscript' in PRIOR_OPTION_KEYS
