"""The one image-I/O module (issue 13 item 2): one decoder, one extension list, one folder scan, one key function.

Every reader of the project (inference CLI, datasets, LMDB tools, scripts) decodes through
``mixcl_arch.utils.image_io.decode_image``, so an EXIF-rotated photo, a CMYK file or an image with alpha gives the
same pixels everywhere.
"""
import io
import os
import os.path as osp

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

import mixcl_arch  # noqa: F401  (patches basicsr first)
from mixcl_arch.data.clip_paired_image_dataset import CLIPPairedImageDataset
from mixcl_arch.data.lmdb_tools import make_lmdb_from_folder
from mixcl_arch.dehaze import main as dehaze
from mixcl_arch.utils.image_io import IMG_EXTENSIONS, decode_image, image_key, image_size, scan_images


def _quadrants(h=16, w=32):
    """(h, w, 3) uint8 RGB with four flat quadrants of distinct colours: any rotation or flip is visible."""
    img = np.zeros((h, w, 3), np.uint8)
    img[:h // 2, :w // 2] = (230, 30, 30)
    img[:h // 2, w // 2:] = (30, 230, 30)
    img[h // 2:, :w // 2] = (30, 30, 230)
    img[h // 2:, w // 2:] = (230, 230, 30)
    return img


def _exif_jpeg(path, orientation=6):
    """A JPEG stored 16x32 (H x W) whose EXIF says 'rotate 90 degrees clockwise to display' (orientation 6)."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(_quadrants()).save(path, 'JPEG', quality=95, exif=exif)
    with Image.open(path) as im:  # what a photo viewer shows: (32, 16, 3) RGB
        return np.asarray(ImageOps.exif_transpose(im).convert('RGB'), np.float32) / 255


def test_exif_orientation_is_applied_by_the_dataset_the_cli_and_the_lmdb_writer(tmp_path):
    hazy, gt = tmp_path / 'hazy', tmp_path / 'GT'
    hazy.mkdir()
    gt.mkdir()
    shown = _exif_jpeg(hazy / 'a.jpg')
    assert shown.shape == (32, 16, 3)
    cv2.imwrite(str(gt / 'a.png'), (shown[..., ::-1] * 255).round().astype(np.uint8))

    direct = decode_image(str(hazy / 'a.jpg'))
    assert direct.shape == (32, 16, 3) and np.abs(direct - shown).mean() < 0.02
    assert image_size(str(hazy / 'a.jpg')) == (32, 16)  # the dataset's size check sees the rotated size

    # the dataset (disk): rotated like the viewer, so it pairs with the GT of the displayed size
    ds = CLIPPairedImageDataset({'dataroot_lq': str(hazy), 'dataroot_gt': str(gt), 'phase': 'test'})
    lq = ds[0]['lq'].numpy().transpose(1, 2, 0)
    assert lq.shape == (32, 16, 3) and np.array_equal(lq, direct)

    # the LMDB writer stores the rotated pixels, so a database reads like its folder
    make_lmdb_from_folder(str(hazy), str(tmp_path / 'hazy.lmdb'), progress=False)
    make_lmdb_from_folder(str(gt), str(tmp_path / 'GT.lmdb'), progress=False)
    ds_lmdb = CLIPPairedImageDataset({'dataroot_lq': str(tmp_path / 'hazy.lmdb'), 'io_backend': {'type': 'lmdb'},
                                      'dataroot_gt': str(tmp_path / 'GT.lmdb'), 'phase': 'test'})
    assert np.array_equal(ds_lmdb[0]['lq'].numpy().transpose(1, 2, 0), direct)

    # the inference CLI (identity method): the output is the rotated image
    assert dehaze(['-i', str(hazy / 'a.jpg'), '-o', str(tmp_path / 'out'), '--method', 'hazy', '--ext', 'png']) == 0
    out = decode_image(str(tmp_path / 'out' / 'a.png'))
    assert out.shape == (32, 16, 3) and np.abs(out - direct).max() <= 0.5 / 255 + 1e-6


def test_sources_path_bytes_and_buffer_decode_alike(tmp_path):
    rgb = _quadrants()
    path = tmp_path / 'q.png'
    cv2.imwrite(str(path), rgb[..., ::-1])
    data = path.read_bytes()
    ref = decode_image(path)
    assert ref.dtype == np.float32 and ref.shape == (16, 32, 3)
    assert np.array_equal(ref * 255, rgb.astype(np.float32))
    assert np.array_equal(decode_image(data), ref)
    assert np.array_equal(decode_image(np.frombuffer(data, np.uint8)), ref)
    with pytest.raises(FileNotFoundError, match='missing.png'):
        decode_image(tmp_path / 'missing.png')
    with pytest.raises(ValueError, match='lmdb key x: empty file'):
        decode_image(b'', 'lmdb key x')
    with pytest.raises(ValueError, match='junk.png: cannot read the image size'):
        decode_image(b'not an image at all', 'junk.png')


@pytest.mark.parametrize('fmt', ['JPEG', 'TIFF'])
def test_cmyk_files_decode_to_rgb_without_alpha(tmp_path, fmt):
    rgb = _quadrants()
    buf = io.BytesIO()
    Image.fromarray(rgb).convert('CMYK').save(buf, fmt)
    img, info = decode_image(buf.getvalue(), f'cmyk.{fmt.lower()}', with_info=True)
    assert img.shape == (16, 32, 3) and info.alpha is None and not info.gray
    with Image.open(io.BytesIO(buf.getvalue())) as im:
        want = np.asarray(im.convert('RGB'), np.float32) / 255
    assert np.abs(img - want).mean() < 0.03


def test_alpha_gray_and_sixteen_bit(tmp_path):
    rgba = np.dstack([_quadrants(), np.full((16, 32), 128, np.uint8)])
    for name, kw in (('rgba.png', {}), ('rgba.webp', {'lossless': True})):
        Image.fromarray(rgba, 'RGBA').save(tmp_path / name, **kw)
        img, info = decode_image(tmp_path / name, with_info=True)
        assert np.array_equal(img * 255, rgba[..., :3].astype(np.float32)), name  # alpha dropped from the RGB
        assert info.alpha is not None and np.allclose(info.alpha, 128 / 255), name
    # colour-key transparency (tRNS) is alpha too
    Image.fromarray(_quadrants()).save(tmp_path / 'key.png', transparency=(230, 30, 30))
    _, info = decode_image(tmp_path / 'key.png', with_info=True)
    assert info.alpha is not None and info.alpha[0, 0] == 0 and info.alpha[-1, -1] == 1
    gray16 = (np.arange(16 * 32, dtype=np.uint16).reshape(16, 32) * 97)
    cv2.imwrite(str(tmp_path / 'g16.png'), gray16)
    img, info = decode_image(tmp_path / 'g16.png', with_info=True)
    assert info.gray and info.bit_depth == 16 and info.alpha is None
    assert np.array_equal(img[..., 0], img[..., 2]) and np.allclose(img[..., 1], gray16 / 65535.0, atol=1e-7)


def test_scan_images_lists_sorted_relative_images_and_skips_hidden(tmp_path):
    for rel in ('b.png', 'a.JPG', 'sub/c.pgm', 'sub/deeper/d.tiff', '.hidden.png', '.cache/e.png', 'notes.txt',
                'sub/x.json'):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b'x')
    assert scan_images(str(tmp_path)) == ['a.JPG', 'b.png', 'sub/c.pgm', 'sub/deeper/d.tiff']
    assert scan_images(str(tmp_path), recursive=False) == ['a.JPG', 'b.png']
    assert scan_images(str(tmp_path), with_others=True)[1] == ['notes.txt', 'sub/x.json']
    (tmp_path / 'empty').mkdir()
    assert scan_images(str(tmp_path / 'empty'), allow_empty=True) == []
    with pytest.raises(ValueError, match='No images found in .*empty'):
        scan_images(str(tmp_path / 'empty'))
    with pytest.raises(FileNotFoundError, match='nowhere'):
        scan_images(str(tmp_path / 'nowhere'))
    os.symlink(tmp_path / 'sub', tmp_path / 'link')
    assert 'link/c.pgm' not in scan_images(str(tmp_path))
    assert 'link/c.pgm' in scan_images(str(tmp_path), followlinks=True)
    assert all(e == e.lower() and e.startswith('.') for e in IMG_EXTENSIONS)


def test_image_key_strips_only_image_extensions():
    assert image_key('sub/0001_0.8_0.2.png') == 'sub/0001_0.8_0.2'
    assert image_key(osp.join('part1', '0025_0.8_0.1.JPG')) == 'part1/0025_0.8_0.1'
    assert image_key('0025_0.8_0.2') == '0025_0.8_0.2'  # an LMDB key: its dotted tail is no extension
    assert image_key('café_1.png') == 'café_1'
    assert image_key('café_1.png', non_ascii='quote') == 'caf%C3%A9_1'
    assert image_key('plain.png', non_ascii='quote') == 'plain'
    with pytest.raises(ValueError, match='café_1.png: non-ASCII'):
        image_key('café_1.png', non_ascii='error')
    with pytest.raises(ValueError, match="non_ascii must be one of"):
        image_key('a.png', non_ascii='drop')


@pytest.mark.parametrize('mode,fmt,rotated', [('RGB', 'PNG', True), ('L', 'PNG', True), ('RGB', 'WEBP', True),
                                              ('RGB', 'TIFF', True), ('RGBA', 'TIFF', True), ('RGB', 'JPEG', True),
                                              ('RGBA', 'PNG', False), ('RGBA', 'WEBP', False)])
def test_header_size_check_agrees_with_the_decoder_on_exif_rotation(tmp_path, mode, fmt, rotated):
    """The datasets compare hazy / GT sizes from headers (image_size) before decoding: the two must agree, or a
    rotated photo would be refused (or a mismatch missed). PNG / WebP with alpha are decoded unrotated (OpenCV)."""
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / f'o.{fmt.lower()}'
    Image.new(mode, (10, 6)).save(path, fmt, exif=exif, **({'lossless': True} if fmt == 'WEBP' else {}))
    want = (10, 6) if rotated else (6, 10)
    assert decode_image(path).shape[:2] == want and image_size(str(path)) == want
