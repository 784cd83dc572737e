"""The inference CLI (mixcl_arch.dehaze) and build_restorer on odd inputs, checkpoint formats, fallbacks, tiling."""
import json
import os
import subprocess
import sys
import warnings

import cv2
import numpy as np
import pytest
import torch
import yaml

from mixcl_arch.archs.mixdehazenet_arch import MixCLDehazeNet, MixDehazeNet
from mixcl_arch.dehaze import main
from mixcl_arch.restorers import ConditioningFallbackWarning, build_restorer
from mixcl_arch.utils import tiling
from mixcl_arch.utils.image_io import decode_image
from mixcl_arch.utils.tiling import tile_starts

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(embed_dims=[8, 16, 16, 16, 8], depths=[1, 1, 1, 1, 1])


@pytest.fixture(autouse=True)
def clip_offline(monkeypatch):
    """No hub probing: a missing CLIP tag must fail at once (the behaviour of an offline machine)."""
    monkeypatch.setenv('MIXCL_CLIP_OFFLINE', '1')


def _save_store(path, feats):
    """A real feature store file holding only per-domain text features (no images)."""
    from mixcl_arch.clip.store import FeatureStore
    domains = list(feats)
    FeatureStore({'domains': domains}, {'domain': torch.stack([feats[d] for d in domains])}).save(path)
    return str(path)


pytestmark = pytest.mark.usefixtures('one_thread')


def _cl_net(seed=0, **kw):
    torch.manual_seed(seed)
    net = MixCLDehazeNet(**TINY, data_range='unit', **kw).eval()
    with torch.no_grad():  # random BatchNorm statistics so that different weights give visibly different outputs
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return net


@pytest.fixture(scope='module')
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp('ckpt')
    net = _cl_net()
    paths = {'basicsr': str(d / 'net_g_basicsr.pth'), 'official': str(d / 'official.pk')}
    torch.save({'params': net.state_dict()}, paths['basicsr'])
    torch.save({'state_dict': {'module.' + k: v for k, v in net.state_dict().items()}, 'epoch': 3,
                'best_psnr': 20.0}, paths['official'])
    plain = MixDehazeNet(**TINY, data_range='unit').eval()
    paths['plain'] = str(d / 'plain.pth')
    torch.save({'params': plain.state_dict()}, paths['plain'])
    return paths, net, plain


def _write(path, img):
    assert cv2.imwrite(str(path), img)


@pytest.fixture()
def odd_folder(tmp_path):
    rng = np.random.default_rng(0)
    d = tmp_path / 'in'
    d.mkdir()
    _write(d / 'one.png', rng.integers(0, 255, (1, 1, 3), dtype=np.uint8))
    _write(d / 'gray.png', rng.integers(0, 255, (37, 45), dtype=np.uint8))
    rgba = rng.integers(0, 255, (33, 29, 4), dtype=np.uint8)
    rgba[..., 3] = np.linspace(0, 255, 29, dtype=np.uint8)[None, :]
    _write(d / 'rgba.png', rgba)
    _write(d / 'deep.png', rng.integers(0, 65535, (31, 26, 3), dtype=np.uint16))
    _write(d / 'thin.jpg', rng.integers(0, 255, (3, 200, 3), dtype=np.uint8))
    _write(d / 'photo.webp', rng.integers(0, 255, (24, 40, 3), dtype=np.uint8))
    (d / 'readme.txt').write_text('not an image')
    (d / 'broken.png').write_bytes(b'\x89PNG\r\n\x1a\n truncated')
    return d


def _summary(out):
    line = [ln for ln in out.splitlines() if ln.startswith('summary: ')][-1]
    return json.loads(line[len('summary: '):])


def test_odd_inputs_end_to_end(ckpts, odd_folder, tmp_path, capsys):
    paths, net, _ = ckpts
    out = tmp_path / 'out'
    rc = main(['-i', str(odd_folder), '-o', str(out), '--weights', paths['basicsr'], '--cond-fallback', 'none',
               '--device', 'cpu', '--compare'])
    cap = capsys.readouterr()
    assert rc == 1  # broken.png failed: the run goes on, but the exit status says something failed
    s = _summary(cap.out)
    assert (s['processed'], s['skipped_non_image'], s['failed'], s['skipped_existing']) == (6, 1, 1, 0)
    assert 'broken.png' in cap.out and 'readme.txt' in cap.err
    assert 'ZERO conditioning' in cap.err  # the fallback is stated plainly

    # shapes and modes are preserved
    one = cv2.imread(str(out / 'one.png'), cv2.IMREAD_UNCHANGED)
    assert one.shape == (1, 1, 3)
    gray = cv2.imread(str(out / 'gray.png'), cv2.IMREAD_UNCHANGED)
    assert gray.shape == (37, 45) and gray.dtype == np.uint8
    rgba_in = cv2.imread(str(odd_folder / 'rgba.png'), cv2.IMREAD_UNCHANGED)
    rgba = cv2.imread(str(out / 'rgba.png'), cv2.IMREAD_UNCHANGED)
    assert rgba.shape == (33, 29, 4)
    np.testing.assert_array_equal(rgba[..., 3], rgba_in[..., 3])  # alpha carried through untouched
    deep = cv2.imread(str(out / 'deep.png'), cv2.IMREAD_UNCHANGED)
    assert deep.shape == (31, 26, 3) and deep.dtype == np.uint16
    assert cv2.imread(str(out / 'thin.jpg')).shape == (3, 200, 3)
    assert cv2.imread(str(out / 'photo.webp')).shape == (24, 40, 3)
    cmp = cv2.imread(str(out / 'compare' / 'thin.jpg'))
    assert cmp.shape[0] == 3 and cmp.shape[1] > 400  # input | gap | output

    # the written pixels are the network's output (16-bit: no 8-bit rounding on the way)
    x, _ = decode_image(odd_folder / 'deep.png', with_info=True)
    with torch.no_grad():
        ref = net(torch.from_numpy(x.transpose(2, 0, 1))[None], torch.zeros(1, 1, 512)).clamp(0, 1)[0]
    ref = ref.numpy().transpose(1, 2, 0)[:, :, ::-1]
    assert np.abs(deep / 65535.0 - ref).max() < 2e-4
    assert np.abs(deep / 65535.0 - x[:, :, ::-1]).max() > 0.01  # and it is not just the input


def test_gray_output_is_luma_of_the_network_output(ckpts, odd_folder, tmp_path):
    paths, net, _ = ckpts
    out = tmp_path / 'out'
    assert main(['-i', str(odd_folder / 'gray.png'), '-o', str(out), '--weights', paths['basicsr'],
                 '--cond-fallback', 'none']) == 0
    x, info = decode_image(odd_folder / 'gray.png', with_info=True)
    assert info.gray and np.allclose(x[..., 0], x[..., 1])
    with torch.no_grad():
        y = net(torch.from_numpy(x.transpose(2, 0, 1))[None], torch.zeros(1, 512)).clamp(0, 1)[0].numpy()
    luma = 0.299 * y[0] + 0.587 * y[1] + 0.114 * y[2]
    got = cv2.imread(str(out / 'gray.png'), cv2.IMREAD_UNCHANGED) / 255.0
    assert np.abs(got - luma).max() <= 1.5 / 255


def test_empty_and_image_less_folders(ckpts, tmp_path, capsys):
    paths = ckpts[0]
    empty = tmp_path / 'empty'
    empty.mkdir()
    assert main(['-i', str(empty), '-o', str(tmp_path / 'o'), '--weights', paths['basicsr']]) == 1
    assert 'contains no images' in capsys.readouterr().err
    (empty / 'a.txt').write_text('x')
    assert main(['-i', str(empty), '-o', str(tmp_path / 'o'), '--weights', paths['basicsr']]) == 1
    err = capsys.readouterr().err
    assert 'a.txt' in err and 'contains no images' in err
    assert main(['-i', str(tmp_path / 'missing'), '-o', str(tmp_path / 'o'), '--weights', paths['basicsr']]) == 1
    assert 'Input not found' in capsys.readouterr().err
    assert not (tmp_path / 'o').exists()


def test_all_unreadable_exits_nonzero(ckpts, tmp_path, capsys):
    d = tmp_path / 'in'
    d.mkdir()
    (d / 'a.jpg').write_bytes(b'')
    (d / 'b.png').write_bytes(b'not a png at all')
    rc = main(['-i', str(d), '-o', str(tmp_path / 'o'), '--weights', ckpts[0]['basicsr'], '--cond-fallback', 'none'])
    out = capsys.readouterr().out
    assert rc == 1
    assert _summary(out)['failed'] == 2 and 'a.jpg' in out and 'b.png' in out


def test_existing_outputs_are_not_overwritten(ckpts, tmp_path, capsys):
    d = tmp_path / 'in'
    d.mkdir()
    _write(d / 'a.png', np.full((20, 20, 3), 200, np.uint8))
    out = tmp_path / 'out'
    out.mkdir()
    marker = np.zeros((5, 5, 3), np.uint8)
    _write(out / 'a.png', marker)
    args = ['-i', str(d), '-o', str(out), '--weights', ckpts[0]['basicsr'], '--cond-fallback', 'none']
    assert main(args) == 0  # nothing failed, the one output already exists
    s = _summary(capsys.readouterr().out)
    assert (s['processed'], s['skipped_existing']) == (0, 1)
    np.testing.assert_array_equal(cv2.imread(str(out / 'a.png')), marker)
    # --overwrite replaces only this tool's own outputs: the user's file is kept and the image counts as failed
    assert main(args + ['--overwrite']) == 1
    assert 'not written by this tool' in capsys.readouterr().out
    np.testing.assert_array_equal(cv2.imread(str(out / 'a.png')), marker)
    os.remove(out / 'a.png')
    assert main(args) == 0 and _summary(capsys.readouterr().out)['processed'] == 1
    first = (out / 'a.png').read_bytes()
    _write(d / 'a.png', np.full((20, 20, 3), 10, np.uint8))
    assert main(args + ['--overwrite']) == 0  # its own earlier output is replaced
    assert _summary(capsys.readouterr().out)['processed'] == 1
    assert (out / 'a.png').read_bytes() != first
    # writing into the input folder must never replace the inputs, even with --overwrite
    before = (d / 'a.png').read_bytes()
    assert main(['-i', str(d), '-o', str(d), '--method', 'hazy', '--overwrite']) == 1
    assert (d / 'a.png').read_bytes() == before
    assert 'replace its own input' in capsys.readouterr().err


def test_tiled_run_matches_untiled(ckpts, tmp_path, monkeypatch, capsys):
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:150, 0:170] / 170.0
    img = np.stack([0.3 + 0.5 * xx, 0.4 + 0.3 * yy, 0.6 - 0.2 * xx * yy], axis=2)
    img = np.clip(img + rng.normal(0, 0.02, img.shape), 0, 1)
    d = tmp_path / 'in'
    d.mkdir()
    _write(d / 'big.png', (img[:, :, ::-1] * 65535).astype(np.uint16))
    calls = []
    real = tiling.tiled_forward

    def counting(fn, x, tile, overlap, align=1):
        calls.append((tile, overlap, align))
        return real(lambda t: (calls.append(tuple(t.shape[-2:])), fn(t))[1], x, tile, overlap, align=align)

    monkeypatch.setattr(tiling, 'tiled_forward', counting)
    # torch backend: the counter wraps tiling.tiled_forward (tests/test_export.py tiles the ONNX Runtime one)
    base = ['-i', str(d), '--weights', ckpts[0]['basicsr'], '--cond-fallback', 'none', '--backend', 'torch']
    assert main(base + ['-o', str(tmp_path / 'tiled'), '--tile', '96', '--tile-overlap', '48']) == 0
    n_tiles = len(tile_starts(152, 96, 48, 4)) * len(tile_starts(172, 96, 48, 4))
    assert calls[0] == (96, 48, 4) and n_tiles > 1 and calls.count((96, 96)) == n_tiles  # the tiles really ran
    calls.clear()
    assert main(base + ['-o', str(tmp_path / 'full'), '--tile', '0']) == 0
    assert calls[1:] == [(150, 170)]
    tiled = cv2.imread(str(tmp_path / 'tiled' / 'big.png'), cv2.IMREAD_UNCHANGED) / 65535.0
    full = cv2.imread(str(tmp_path / 'full' / 'big.png'), cv2.IMREAD_UNCHANGED) / 65535.0
    diff = np.abs(tiled - full)
    assert diff.mean() < 5e-3 and diff.max() < 0.1, (diff.mean(), diff.max())
    # no seam: the tiled image has no neighbour-to-neighbour jump that the untiled one lacks
    jt, jf = np.abs(np.diff(tiled, axis=1)).max(axis=(0, 2)), np.abs(np.diff(full, axis=1)).max(axis=(0, 2))
    assert (jt - jf).max() < 0.03


def test_official_and_basicsr_checkpoints_give_identical_outputs(ckpts):
    paths, _, _ = ckpts
    x = torch.rand(1, 3, 45, 52)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', ConditioningFallbackWarning)
        a = build_restorer('net', paths['basicsr'], cond_fallback='none')
        b = build_restorer('net', paths['official'], cond_fallback='none')
    assert a.net_opt == b.net_opt and a.net_opt['type'] == 'MixCLDehazeNet'
    assert a.net_opt['embed_dims'] == TINY['embed_dims'] and a.net_opt['depths'] == TINY['depths']
    assert a.num_params == b.num_params == sum(p.numel() for p in ckpts[1].parameters())
    assert torch.equal(a(x), b(x))


def test_params_ema_is_preferred_and_param_key_selects(ckpts, tmp_path):
    net_a, net_b = _cl_net(seed=1), _cl_net(seed=2)
    path = str(tmp_path / 'both.pth')
    torch.save({'params': net_a.state_dict(), 'params_ema': net_b.state_dict()}, path)
    x = torch.rand(1, 3, 40, 40)
    zero = torch.zeros(1, 512)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', ConditioningFallbackWarning)
        ema = build_restorer('net', path, cond_fallback='none')
        raw = build_restorer('net', path, cond_fallback='none', param_key='params')
    with torch.no_grad():
        assert torch.allclose(ema(x), net_b(x, zero).clamp(0, 1), atol=1e-6)
        assert torch.allclose(raw(x), net_a(x, zero).clamp(0, 1), atol=1e-6)
        assert not torch.allclose(ema(x), raw(x), atol=1e-4)


def test_plain_mixdehazenet_is_inferred_and_opt_yaml_builds_any_arch(ckpts, tmp_path):
    paths, _, plain = ckpts
    r = build_restorer('net', paths['plain'])
    assert type(r.net).__name__ == 'MixDehazeNet' and r.net.num_cond == 0 and r.notes == []
    x = torch.rand(2, 3, 41, 43)
    with torch.no_grad():
        assert torch.allclose(r(x), plain(x).clamp(0, 1), atol=1e-6)
    # a YAML whose network_g says data_range signed: the restorer still takes and returns [0, 1]
    opt = {'network_g': dict(type='MixDehazeNet', data_range='signed', **TINY),
           'path': {'pretrain_network_g': paths['plain']}}
    yml = tmp_path / 'test.yml'
    yml.write_text(yaml.safe_dump(opt))
    r2 = build_restorer('net', opt=str(yml))
    assert r2.net.data_range == 'signed'
    assert torch.allclose(r2(x), r(x), atol=1e-5)
    wrong = dict(opt, network_g=dict(type='MixDehazeNet', variant='S'))
    with pytest.raises(ValueError, match='does not fit MixDehazeNet'):
        build_restorer('net', opt=wrong)


def test_missing_clip_weights_fail_fast_with_the_option_names(ckpts, tmp_path, capsys):
    d = tmp_path / 'in'
    d.mkdir()
    _write(d / 'a.png', np.full((8, 8, 3), 100, np.uint8))
    rc = main(['-i', str(d), '-o', str(tmp_path / 'o'), '--weights', ckpts[0]['basicsr'],
               '--clip-pretrained', str(tmp_path / 'no_such_clip.pt')])
    err = capsys.readouterr().err
    assert rc == 1
    assert 'CLIP weights are missing' in err and '--cond-fallback' in err and 'clip.pretrained' in err
    assert not (tmp_path / 'o' / 'a.png').exists()
    # a domain fallback without per-domain text features is refused up front
    rc = main(['-i', str(d), '-o', str(tmp_path / 'o'), '--weights', ckpts[0]['basicsr'],
               '--clip-pretrained', str(tmp_path / 'no_such_clip.pt'), '--cond-fallback', 'outdoor'])
    err = capsys.readouterr().err  # the config refuses it, naming the YAML key and the flag
    assert rc == 1 and 'conditioning.store' in err and '--feature-store' in err


def test_domain_fallback_uses_the_feature_store_text_feature(ckpts, tmp_path):
    paths, net, _ = ckpts
    torch.manual_seed(5)
    feats = {'indoor': torch.randn(512) * 3, 'outdoor': torch.randn(512) * 3}  # large: the random net barely reacts
    store = _save_store(tmp_path / 'store.pt', feats)
    x = torch.rand(1, 3, 40, 44)
    with pytest.warns(ConditioningFallbackWarning, match="domain 'outdoor'"):
        r = build_restorer('net', paths['basicsr'], clip={'pretrained': str(tmp_path / 'none.pt')},
                           cond_fallback='outdoor', feature_store=store)
    with torch.no_grad():
        assert torch.allclose(r(x), net(x, feats['outdoor'][None]).clamp(0, 1), atol=1e-6)
        assert (r(x) - net(x, feats['indoor'][None]).clamp(0, 1)).abs().max() > 1e-3
    with pytest.raises(ValueError, match=r"\['underwater'\] have no text feature"):
        build_restorer('net', paths['basicsr'], clip={'pretrained': str(tmp_path / 'none.pt')},
                       cond_fallback='underwater', feature_store=store)


def test_hazy_method_is_identity_and_bad_methods_are_clear(tmp_path, monkeypatch):
    d = tmp_path / 'in'
    d.mkdir()
    img = np.random.default_rng(0).integers(0, 255, (9, 11, 3), dtype=np.uint8)
    _write(d / 'a.png', img)
    assert main(['-i', str(d), '-o', str(tmp_path / 'o'), '--method', 'hazy']) == 0
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / 'o' / 'a.png')), img)
    with pytest.raises(ValueError, match='Unknown method'):
        build_restorer('aod')
    with pytest.raises(ValueError, match="Unknown options for method 'net'"):
        build_restorer('net', 'x.pth', tiles=3)
    with pytest.raises(FileNotFoundError, match='no_such.pth'):
        build_restorer('net', str(tmp_path / 'no_such.pth'))
    # a baseline module that is not importable fails only when requested, naming the module
    monkeypatch.setitem(sys.modules, 'mixcl_arch.baselines.dcp', None)
    with pytest.raises(ImportError, match='mixcl_arch.baselines.dcp'):
        build_restorer('dcp')


def test_bf16_autocast_close_to_fp32(ckpts):
    paths = ckpts[0]
    x = torch.rand(1, 3, 40, 48)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', ConditioningFallbackWarning)
        fp32 = build_restorer('net', paths['basicsr'], cond_fallback='none')
        bf16 = build_restorer('net', paths['basicsr'], cond_fallback='none', amp='bf16')
    a, b = fp32(x), bf16(x)
    assert b.dtype == torch.float32 and b.shape == a.shape
    assert (a - b).abs().mean() < 0.02


def test_single_file_to_named_output_and_bad_arguments(ckpts, tmp_path):
    src = tmp_path / 'a.jpg'
    _write(src, np.full((16, 16, 3), 90, np.uint8))
    dst = tmp_path / 'res' / 'clean.png'
    assert main(['-i', str(src), '-o', str(dst), '--weights', ckpts[0]['basicsr'], '--cond-fallback', 'none']) == 0
    assert cv2.imread(str(dst)).shape == (16, 16, 3)
    for bad in (['--tile', '32', '--tile-overlap', '32'], ['--ext', 'gif'], ['--weights', 'w', '--fp16', '--bf16']):
        with pytest.raises(SystemExit) as exc:
            main(['-i', str(src), '-o', str(tmp_path / 'x'), '--weights', 'w'] + bad)
        assert exc.value.code == 2


def test_module_entry_point(ckpts, tmp_path):
    d = tmp_path / 'in'
    d.mkdir()
    _write(d / 'a.png', np.full((12, 10, 3), 120, np.uint8))
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, '-m', 'mixcl_arch.dehaze', '-i', str(d), '-o', str(tmp_path / 'o'),
                           '--weights', ckpts[0]['official'], '--cond-fallback', 'none'],
                          capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert _summary(proc.stdout)['processed'] == 1
    assert (tmp_path / 'o' / 'a.png').is_file()


def test_dcp_baseline_through_the_cli(tmp_path, capsys):
    rng = np.random.default_rng(3)
    clean = rng.uniform(0.05, 0.9, (48, 64, 3))
    t = np.linspace(0.3, 0.9, 64)[None, :, None]
    hazy = clean * t + 0.85 * (1 - t)
    d = tmp_path / 'in'
    d.mkdir()
    _write(d / 'h.png', (hazy[:, :, ::-1] * 255).round().astype(np.uint8))
    assert main(['-i', str(d), '-o', str(tmp_path / 'a'), '--method', 'dcp']) == 0
    assert main(['-i', str(d), '-o', str(tmp_path / 'b'), '--method', 'dcp', '--param', 'omega=0.5']) == 0
    a = cv2.imread(str(tmp_path / 'a' / 'h.png')).astype(float)
    b = cv2.imread(str(tmp_path / 'b' / 'h.png')).astype(float)
    h = cv2.imread(str(d / 'h.png')).astype(float)
    assert a.shape == h.shape and np.abs(a - h).mean() > 5  # DCP removed haze
    assert np.abs(a - b).mean() > 1  # the option reached the baseline
    assert _summary(capsys.readouterr().out)['method'] == 'dcp'
    assert main(['-i', str(d), '-o', str(tmp_path / 'c'), '--method', 'dcp', '--param', 'nonsense=1']) == 1
    assert 'nonsense' in capsys.readouterr().err


def test_fallback_and_store_can_come_from_the_yaml(ckpts, tmp_path):
    paths, net, _ = ckpts
    vec = torch.randn(512) * 3
    store = _save_store(tmp_path / 'store.pt', {'indoor': vec, 'outdoor': -vec})
    opt = {'network_g': dict(type='MixCLDehazeNet', data_range='unit', **TINY),
           'clip': {'model': 'ViT-B-32', 'pretrained': str(tmp_path / 'absent.pt')},
           'conditioning': {'fallback': 'indoor', 'store': store}}
    with pytest.warns(ConditioningFallbackWarning):
        r = build_restorer('net', paths['basicsr'], opt=opt)
    assert r.cond.source == 'domain:indoor'
    x = torch.rand(1, 3, 40, 40)
    with torch.no_grad():
        assert torch.allclose(r(x), net(x, vec[None]).clamp(0, 1), atol=1e-6)
    opt['conditioning']['fallback'] = 'none'
    with pytest.warns(ConditioningFallbackWarning):
        assert build_restorer('net', paths['basicsr'], opt=opt).cond.source == 'none'
    # the old places of these settings are refused with their new one, before the checkpoint is read
    old = dict(opt, clip=dict(opt['clip'], cond_fallback='none'), conditioning=None)
    with pytest.raises(ValueError, match='clip.cond_fallback: this setting moved to conditioning.fallback'):
        build_restorer('net', str(tmp_path / 'not_read.pth'), opt=old)


def test_image_io_modes_round_trip(tmp_path):
    from mixcl_arch.utils.image_io import output_extension, write_image
    rng = np.random.default_rng(7)
    # gray + alpha PNG (colour type 4; OpenCV decodes it as BGRA)
    from PIL import Image
    ga = rng.integers(0, 255, (6, 7, 2), dtype=np.uint8)
    Image.fromarray(ga, 'LA').save(tmp_path / 'ga.png')
    rgb, info = decode_image(tmp_path / 'ga.png', with_info=True)
    assert info.gray and info.alpha is not None and info.bit_depth == 8 and rgb.shape == (6, 7, 3)
    write_image(rgb, tmp_path / 'ga_out.png', info)
    back = np.asarray(Image.open(tmp_path / 'ga_out.png'))
    assert Image.open(tmp_path / 'ga_out.png').mode == 'RGBA'  # OpenCV cannot write LA; gray is kept in RGB
    np.testing.assert_array_equal(back[..., 3], ga[..., 1])
    np.testing.assert_array_equal(back[..., 0], ga[..., 0])
    write_image(rgb, tmp_path / 'ga_drop.png', info, alpha='drop')
    assert cv2.imread(str(tmp_path / 'ga_drop.png'), cv2.IMREAD_UNCHANGED).ndim == 2  # gray, no alpha
    # 16-bit TIFF keeps 16 bits; 16-bit to jpg falls back to png under ext auto, 8-bit when forced
    deep = rng.integers(0, 65535, (5, 4, 3), dtype=np.uint16)
    _write(tmp_path / 'd.tif', deep)
    rgb, info = decode_image(tmp_path / 'd.tif', with_info=True)
    assert info.bit_depth == 16 and np.abs(rgb[..., ::-1] * 65535 - deep).max() < 0.5
    write_image(rgb, tmp_path / 'd_out.tif', info)
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / 'd_out.tif'), cv2.IMREAD_UNCHANGED), deep)
    assert output_extension('.jpg', info) == '.png' and output_extension('.tif', info) == '.tif'
    assert output_extension('.jpg', info, ext='webp') == '.webp'
    write_image(rgb, tmp_path / 'd_out.jpg', info)
    assert cv2.imread(str(tmp_path / 'd_out.jpg'), cv2.IMREAD_UNCHANGED).dtype == np.uint8
    with pytest.raises(ValueError, match='unsupported output extension'):
        write_image(rgb, tmp_path / 'x.gif', info)
    with pytest.raises(FileNotFoundError, match='nope.png'):
        decode_image(tmp_path / 'nope.png', with_info=True)


def test_alpha_drop_and_forced_extension_through_the_cli(tmp_path):
    d = tmp_path / 'in'
    d.mkdir()
    rgba = np.full((10, 12, 4), 60, np.uint8)
    rgba[..., 1] = np.linspace(0, 250, 12, dtype=np.uint8)[None, :]
    _write(d / 'a.png', rgba)
    out = tmp_path / 'o'
    assert main(['-i', str(d), '-o', str(out), '--method', 'hazy', '--alpha', 'drop', '--ext', 'jpg',
                 '--suffix', '_x']) == 0
    got = cv2.imread(str(out / 'a_x.jpg'), cv2.IMREAD_UNCHANGED)
    assert got.shape == (10, 12, 3)
    assert np.abs(got.astype(int) - rgba[..., :3]).mean() < 20  # the colour went through, only JPEG loss


class _RecordingPrior:
    """Deterministic stand-in CLIP prior used to check the wiring (calls, options, shapes), not CLIP itself."""

    calls = []

    def __init__(self, **opt):
        self.opt = opt
        self.domains = ['indoor', 'outdoor']

    def __call__(self, x):
        type(self).calls.append(tuple(x.shape))
        mean = x.mean(dim=(1, 2, 3))
        probs = torch.stack([mean, 1 - mean], dim=1)
        text = torch.arange(512, dtype=torch.float32)[None].repeat(x.shape[0], 1) / 512 * (1 + mean[:, None])
        return {'probs': probs, 'text_hard': text, 'text_soft': -text, 'image_emb': text.flip(1)}


def test_online_conditioning_wiring_computes_once_per_image(ckpts, monkeypatch):
    import mixcl_arch.clip.prior
    monkeypatch.setattr(mixcl_arch.clip.prior, 'CLIPPrior', _RecordingPrior)  # what the conditioner builds
    _RecordingPrior.calls = []
    paths, net, _ = ckpts
    opt = {'clip': {'model': 'tiny', 'pretrained': 'tiny.pt'}, 'conditioning': {'mode': 'soft', 'fallback': 'none'}}
    r = build_restorer('net', paths['basicsr'], opt=opt, tile=48, tile_overlap=16)
    assert r.cond.source == 'clip' and r.notes == []
    # the prior gets the clip: section alone (conditioning settings never reach it), on the restorer's device
    assert r.cond.prior.opt == {'model': 'tiny', 'pretrained': 'tiny.pt', 'device': 'cpu'}
    x = torch.rand(1, 3, 100, 90)
    y = r(x)
    assert _RecordingPrior.calls == [(1, 3, 100, 90)]  # the whole image, once, although 3 x 3 tiles ran
    text = -torch.arange(512, dtype=torch.float32)[None] / 512 * (1 + x.mean())  # soft mode from the YAML
    with torch.no_grad():
        ref = net(x, text)
    assert (y - ref.clamp(0, 1)).abs().mean() < 2e-3  # tiled, so close rather than equal
    # K must match the net: two vectors for a one-vector network is refused at construction, naming key and flag
    with pytest.raises(ValueError, match=r'conditioning vector\(s\).*--cond-extra sets conditioning.extra'):
        build_restorer('net', paths['basicsr'], opt=opt, cond_extra=['image'])


TINY_CLIP_CFG = {
    'embed_dim': 512,
    'vision_cfg': {'image_size': 32, 'layers': 1, 'width': 32, 'head_width': 16, 'patch_size': 16},
    'text_cfg': {'context_length': 77, 'vocab_size': 49408, 'width': 32, 'heads': 2, 'layers': 1},
}


@pytest.fixture(scope='module')
def tiny_clip(tmp_path_factory):
    """A tiny random open_clip model saved to a file, loaded through the same path as downloaded weights."""
    import open_clip
    from mixcl_arch.clip.weights import register_model_cfg
    register_model_cfg('mixcl-test-tiny-clip-cli', TINY_CLIP_CFG)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        model = open_clip.create_model('mixcl-test-tiny-clip-cli')
    path = tmp_path_factory.mktemp('clip') / 'tiny_clip.pt'
    torch.save(model.state_dict(), path)
    return {'model': 'mixcl-test-tiny-clip-cli', 'pretrained': str(path), 'model_cfg': TINY_CLIP_CFG}


def test_online_clip_conditioning_with_a_real_tiny_clip(ckpts, tiny_clip, tmp_path, capsys):
    from mixcl_arch.clip.prior import CLIPPrior
    paths, net, _ = ckpts
    opt = {'clip': tiny_clip, 'conditioning': {'mode': 'soft'}}
    yml = tmp_path / 'opt.yml'
    yml.write_text(yaml.safe_dump(opt))
    d = tmp_path / 'in'
    d.mkdir()
    rng = np.random.default_rng(4)
    _write(d / 'a.png', rng.integers(0, 255, (36, 52, 3), dtype=np.uint8))
    _write(d / 'b.png', np.full((30, 30, 3), 200, np.uint8))
    out = tmp_path / 'out'
    assert main(['-i', str(d), '-o', str(out), '--weights', paths['basicsr'], '--opt', str(yml)]) == 0
    cap = capsys.readouterr()
    assert 'note:' not in cap.err  # CLIP worked: no fallback
    prior = CLIPPrior.from_opt(tiny_clip)
    for name in ('a.png', 'b.png'):
        x = torch.from_numpy(decode_image(d / name, with_info=True)[0].transpose(2, 0, 1))[None]
        with torch.no_grad():
            ref = net(x, prior(x)['text_soft']).clamp(0, 1)[0].numpy().transpose(1, 2, 0)[:, :, ::-1]
        got = cv2.imread(str(out / name)) / 255.0
        assert np.abs(got - ref).max() <= 0.5 / 255 + 1e-6, name
    # hard mode (CLI override) feeds the most likely domain's text feature instead
    r = build_restorer('net', paths['basicsr'], opt=opt, cond_mode='hard')
    x = torch.rand(1, 3, 40, 40)
    with torch.no_grad():
        text = prior.domain_text[prior(x)['probs'].argmax(1)]
        assert torch.allclose(r(x), net(x, text).clamp(0, 1), atol=1e-6)


def test_dehazenet_baseline_through_the_cli(tmp_path, capsys, monkeypatch):
    from mixcl_arch.archs.dehazenet_arch import DehazeNet
    import mixcl_arch.baselines.dehazenet as dehazenet_mod
    torch.manual_seed(0)
    weights = str(tmp_path / 'dehazenet.pth')
    torch.save({'params': DehazeNet().state_dict()}, weights)
    d = tmp_path / 'in'
    d.mkdir()
    _write(d / 'h.png', np.random.default_rng(0).integers(60, 230, (70, 90, 3), dtype=np.uint8))
    seen = {}
    real = dehazenet_mod.predict_transmission

    def spy(net, x, tile=None, tile_overlap=32):
        seen['tile'] = (tile, tile_overlap)
        return real(net, x, tile, tile_overlap)

    monkeypatch.setattr(dehazenet_mod, 'predict_transmission', spy)
    assert main(['-i', str(d), '-o', str(tmp_path / 'o'), '--method', 'dehazenet', '--weights', weights,
                 '--tile', '64', '--tile-overlap', '24', '--param', 't0=0.2']) == 0
    assert seen['tile'] == (64, 24)  # the CLI's tiling options reach the baseline
    s = _summary(capsys.readouterr().out)
    assert s['method'] == 'dehazenet' and s['num_params'] == sum(p.numel() for p in DehazeNet().parameters())
    assert cv2.imread(str(tmp_path / 'o' / 'h.png')).shape == (70, 90, 3)
    assert main(['-i', str(d), '-o', str(tmp_path / 'p'), '--method', 'dehazenet']) == 1
    assert '--weights' in capsys.readouterr().err


def test_recursive_mirrors_subfolders(tmp_path, capsys):
    d = tmp_path / 'in'
    (d / 'sub' / 'deeper').mkdir(parents=True)
    (d / '.hidden').mkdir()
    _write(d / 'a.png', np.full((5, 5, 3), 10, np.uint8))
    _write(d / 'sub' / 'deeper' / 'b.jpg', np.full((6, 4, 3), 99, np.uint8))
    _write(d / '.hidden' / 'c.png', np.full((5, 5, 3), 10, np.uint8))
    assert main(['-i', str(d), '-o', str(tmp_path / 'flat'), '--method', 'hazy']) == 0
    assert _summary(capsys.readouterr().out)['processed'] == 1  # not recursive: only a.png
    assert main(['-i', str(d), '-o', str(tmp_path / 'rec'), '--method', 'hazy', '--recursive']) == 0
    assert _summary(capsys.readouterr().out)['processed'] == 2  # hidden folders are skipped
    assert (tmp_path / 'rec' / 'sub' / 'deeper' / 'b.jpg').is_file() and (tmp_path / 'rec' / 'a.png').is_file()


def test_inputs_are_never_overwritten_and_own_outputs_are_not_reprocessed(tmp_path, capsys):
    d = tmp_path / 'in'
    d.mkdir()
    a_jpg = np.random.default_rng(1).integers(0, 255, (9, 11, 3), dtype=np.uint8)
    a_png = np.random.default_rng(2).integers(0, 255, (9, 11, 3), dtype=np.uint8)
    _write(d / 'a.jpg', a_jpg)
    _write(d / 'a.png', a_png)
    before = (d / 'a.png').read_bytes()
    # a.jpg -> in/a.png would replace another input: refused even with --overwrite
    main(['-i', str(d), '-o', str(d), '--method', 'hazy', '--ext', 'png', '--overwrite'])
    assert (d / 'a.png').read_bytes() == before
    assert 'would replace another input image' in capsys.readouterr().err
    # same folder with a suffix: a re-run does not dehaze its own results again; the a.jpg / a.png clash on a_d.png
    # is reported (and fails the run) every time
    for _ in range(2):
        assert main(['-i', str(d), '-o', str(d), '--method', 'hazy', '--suffix', '_d', '--ext', 'png']) == 1
        assert 'already written by another input in this run' in capsys.readouterr().out
    assert sorted(p.name for p in d.iterdir() if not p.name.startswith('.')) == ['a.jpg', 'a.png', 'a_d.png']
    # an output folder inside the input tree is not read back with --recursive
    assert main(['-i', str(d), '-o', str(d / 'out'), '--method', 'hazy', '--recursive', '--compare']) == 0
    assert main(['-i', str(d), '-o', str(d / 'out'), '--method', 'hazy', '--recursive', '--compare']) == 0
    assert not any('out' in p.relative_to(d / 'out').parts for p in (d / 'out').rglob('*') if p.is_file())
