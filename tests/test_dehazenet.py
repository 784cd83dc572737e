"""DehazeNet baseline: arch (size, padding, Maxout, BReLU), patch dataset, recovery, restorer, training run."""
import glob
import os
import re
import subprocess
import sys

import cv2
import mixcl_arch  # noqa: F401  (registers DehazeNet & co, patches basicsr)
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from basicsr.archs import build_network
from basicsr.data import build_dataset

from mixcl_arch.archs.dehazenet_arch import BReLU, DehazeNet, Maxout
from mixcl_arch.baselines.dehazenet import DehazeNetRecoveryParams, DehazeNetRestorer, dehazenet_recover, \
    estimate_atmospheric_light_from_t
from mixcl_arch.restorers import build_restorer
from mixcl_arch.utils.checkpoint import atomic_torch_save, load_network_weights
from _train_helpers import make_pair_dataset

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))
TRAIN = os.path.join(ROOT, 'mixcl_arch', 'train.py')


# ------------------------------------------------------------------------------------------------------------ arch
def test_parameter_count_per_stage():
    net = build_network({'type': 'DehazeNet'})
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(net.conv1) == 3 * 16 * 25 + 16 == 1216
    assert count(net.ms_convs) == 4 * 16 * (9 + 25 + 49) + 48 == 5360
    assert count(net.conv_regress) == 48 * 36 + 1 == 1729
    assert count(net) == 8305
    assert (net.num_cond, net.cond_dim) == (0, 512)


@pytest.mark.parametrize('shape', [(1, 3, 17, 23), (2, 3, 9, 31), (1, 3, 16, 16), (1, 3, 2, 5)])
def test_same_padding_keeps_any_size(shape):
    torch.manual_seed(0)
    net = DehazeNet().eval()
    with torch.no_grad():
        t = net(torch.rand(shape))
    assert t.shape == (shape[0], 1, *shape[2:])
    assert float(t.min()) >= 0 and float(t.max()) <= 1


def _reference_pre_clamp(net, x):
    b, _, h, w = x.shape
    feat = F.conv2d(F.pad(x, (2, 2, 2, 2), mode='reflect'), net.conv1.weight, net.conv1.bias)
    feat = feat.reshape(b, 4, 4, h, w).amax(dim=2)
    ms = [F.conv2d(F.pad(feat, (k // 2, ) * 4, mode='reflect'), c.weight, c.bias)
          for k, c in zip((3, 5, 7), net.ms_convs)]
    feat = F.max_pool2d(torch.cat(ms, 1), 7, stride=1, padding=3)
    return F.conv2d(F.pad(feat, (2, 3, 2, 3), mode='reflect'), net.conv_regress.weight, net.conv_regress.bias)


@torch.no_grad()
def test_forward_matches_reference_layout():
    """Conv5x5 -> Maxout(4) -> 3/5/7 convs -> 7x7 max pool -> 6x6 conv (pad 2 before, 3 after) -> clamp."""
    torch.manual_seed(1)
    net = DehazeNet().eval()
    x = torch.rand(2, 3, 13, 19)
    # spread the outputs over [0, 1] and beyond so that the clamp matters
    net.conv_regress.weight.mul_(50)
    net.conv_regress.bias.add_(0.5 - _reference_pre_clamp(net, x).median())
    pre = _reference_pre_clamp(net, x)
    assert float(pre.min()) < 0 < 1 < float(pre.max())
    assert torch.allclose(net(x), pre.clamp(0, 1), atol=1e-5)


def test_bad_arch_options_and_inputs():
    with pytest.raises(ValueError, match='multiple'):
        DehazeNet(num_features=15)
    with pytest.raises(ValueError, match=r'\(B, 3, H, W\)'):
        DehazeNet()(torch.rand(1, 1, 16, 16))


def test_maxout_is_max_over_consecutive_groups():
    x = torch.randn(2, 16, 5, 7)
    out = Maxout(4)(x)
    assert out.shape == (2, 4, 5, 7)
    for g in range(4):
        expected = x[:, 4 * g:4 * g + 4].max(dim=1).values
        assert torch.equal(out[:, g], expected)
    # only the arg-max of each group gets a gradient
    x.requires_grad_(True)
    Maxout(4)(x).sum().backward()
    assert torch.equal(x.grad.sum(dim=1), torch.full((2, 5, 7), 4.0))
    with pytest.raises(ValueError, match='groups'):
        Maxout(3)(torch.randn(1, 16, 2, 2))


def test_brelu_clamps_with_unit_gradient_inside():
    x = torch.tensor([-0.5, 0.0, 0.3, 0.99, 1.0, 1.7], requires_grad=True)
    y = BReLU()(x)
    assert torch.equal(y.detach(), torch.tensor([0.0, 0.0, 0.3, 0.99, 1.0, 1.0]))
    y.sum().backward()
    assert x.grad[[0, 5]].tolist() == [0.0, 0.0]
    assert x.grad[[2, 3]].tolist() == [1.0, 1.0]
    with pytest.raises(ValueError):
        BReLU(1.0, 0.0)


# ---------------------------------------------------------------------------------------------------------- dataset
def _clean_folder(folder, n=3, size=40, seed=0):
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        img = (rng.random((size, size + 8, 3)) * 255).astype(np.uint8)
        cv2.imwrite(os.path.join(folder, f'img{i}.png'), img)
    return folder


def _patch_opt(folder, **kw):
    opt = dict(name='patches', type='TransmissionPatchDataset', dataroot_gt=folder, io_backend=dict(type='disk'),
               patch_size=16, patches_per_image=5, phase='train')
    opt.update(kw)
    return opt


def test_patch_dataset_synthesises_hazy_patches(tmp_path):
    folder = _clean_folder(str(tmp_path / 'clean'))
    np.random.seed(0)
    ds = build_dataset(_patch_opt(folder, t_range=[0.2, 0.6], A=[0.7, 0.9]))
    assert len(ds) == 15
    ts = []
    for idx in (0, 7, 14):
        s = ds[idx]
        assert s['lq'].shape == (3, 16, 16) and s['clear'].shape == (3, 16, 16) and s['gt'].shape == (1, 16, 16)
        t, a = float(s['t']), float(s['A'])
        assert 0.2 <= t <= 0.6 and 0.7 <= a <= 0.9
        assert torch.all(s['gt'] == t)
        assert torch.allclose(s['lq'], s['clear'] * t + a * (1 - t), atol=1e-6)
        assert s['lq_path'].endswith(f'img{idx // 5}.png')
        ts.append(t)
    assert len(set(ts)) == 3  # t is drawn per sample


def test_patch_dataset_reads_lmdb(tmp_path):
    from mixcl_arch.data.lmdb_tools import make_lmdb_from_folder
    folder = _clean_folder(str(tmp_path / 'clean'), n=2)
    make_lmdb_from_folder(folder, str(tmp_path / 'clean.lmdb'), progress=False)
    ds = build_dataset(_patch_opt(str(tmp_path / 'clean.lmdb'), io_backend=dict(type='lmdb')))
    assert len(ds) == 10
    sample = ds[6]
    assert sample['lq_path'] == 'img1' and sample['lq'].shape == (3, 16, 16)


def test_patch_dataset_errors_at_construction(tmp_path):
    with pytest.raises(FileNotFoundError, match='missing'):
        build_dataset(_patch_opt(str(tmp_path / 'missing')))
    os.makedirs(tmp_path / 'empty')
    (tmp_path / 'empty' / 'notes.txt').write_text('no images here')
    with pytest.raises(ValueError, match='no images'):
        build_dataset(_patch_opt(str(tmp_path / 'empty')))
    folder = _clean_folder(str(tmp_path / 'clean'), n=1)
    with pytest.raises(ValueError, match='t_range'):
        build_dataset(_patch_opt(folder, t_range=[0.0, 1.0]))
    with pytest.raises(ValueError, match='A must be'):
        build_dataset(_patch_opt(folder, A=1.5))
    with pytest.raises(ValueError, match='smaller than patch_size'):
        build_dataset(_patch_opt(folder, patch_size=64))
    bad = tmp_path / 'bad'
    os.makedirs(bad)
    (bad / 'broken.png').write_bytes(b'not a png')
    with pytest.raises(IOError, match='broken.png'):
        build_dataset(_patch_opt(str(bad)))


# --------------------------------------------------------------------------------------------------------- recovery
def _synthetic_scene(b=2, h=48, w=64, seed=0):
    """Clear J, smooth t in [0.03, 0.95] (a far, almost opaque corner), grey A (B, 3) and I = J t + A (1 - t)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing='ij')
    J = (0.1 + 0.7 * torch.rand(b, 3, 1, 1, generator=g)) * (0.6 + 0.4 * torch.sin(6 * xx + 3 * yy))[None, None]
    t = (0.03 + 0.92 * (0.6 * xx + 0.4 * yy))[None, None].expand(b, 1, h, w).contiguous()
    A = torch.tensor([0.9, 0.8])[:b, None].expand(b, 3).contiguous()
    return J, t, A, J * t + A[:, :, None, None] * (1 - t)


def test_recovery_with_true_t_and_A_is_exact():
    J, t, A, hazy = _synthetic_scene()
    rec = dehazenet_recover(hazy, t, DehazeNetRecoveryParams(refine=False, t0=0.01), A=A)
    assert (rec - J).abs().max() < 1e-4  # stated tolerance: float32 round-off / t only (t >= 0.03 > t0)


def test_recovery_estimates_A_from_the_haziest_pixels():
    J, t, A, hazy = _synthetic_scene()
    est = estimate_atmospheric_light_from_t(hazy, t, top_ratio=0.01)
    assert torch.allclose(est, A, atol=0.03)  # the haziest 1% have t < 0.05: I = A within 0.05 * |J - A|
    assert torch.all(est[:, 0] == est[:, 1])  # grey A
    out = dehazenet_recover(hazy, t, DehazeNetRecoveryParams(refine=False), return_all=True)
    assert torch.equal(out['A'], est)
    err = (out['J'] - J).abs()
    assert err[(t >= 0.3).expand_as(err)].mean() < 0.03  # away from the densest haze, where A's error is amplified
    assert err.pow(2).mean() < 0.1 * (hazy - J).pow(2).mean()
    # with the guided-filter refinement (defaults) the result stays far closer to J than the hazy input
    refined = dehazenet_recover(hazy, t)
    assert (refined - J).pow(2).mean() < 0.25 * (hazy - J).pow(2).mean()


def test_recovery_rejects_bad_input():
    x = torch.rand(1, 3, 8, 8)
    with pytest.raises(ValueError, match='t must be'):
        dehazenet_recover(x, torch.rand(1, 1, 8, 9))
    with pytest.raises(ValueError, match='atmo_mode'):
        estimate_atmospheric_light_from_t(x, torch.rand(1, 1, 8, 8), mode='blue')


# --------------------------------------------------------------------------------------------------------- restorer
def _save_weights(path, seed=0, **net_opt):
    torch.manual_seed(seed)
    net = DehazeNet(**net_opt)
    atomic_torch_save({'params': net.state_dict()}, str(path))
    return net


def test_restorer_interface_and_tiling(tmp_path):
    weights = tmp_path / 'dehazenet.pth'
    net = _save_weights(weights)
    restorer = build_restorer('dehazenet', weights=str(weights), device='cpu',
                              param_text={'refine': 'false', 'a_normalize': 'false'})
    assert restorer.name == 'dehazenet' and restorer.num_params == 8305 and restorer.net is not None
    x = torch.rand(2, 3, 37, 45)
    out = restorer(x)
    assert out.shape == x.shape and float(out.min()) >= 0 and float(out.max()) <= 1
    with torch.no_grad():
        t = net.eval()(x)
    assert torch.allclose(restorer.estimate(x)['t_raw'], t, atol=1e-6)
    assert torch.allclose(out, dehazenet_recover(x, t, DehazeNetRecoveryParams(refine=False)), atol=1e-6)
    # a_normalize (default): the net's second pass sees the input divided by the estimated A
    parts = DehazeNetRestorer(str(weights), refine=False).estimate(x)
    with torch.no_grad():
        t2 = net((x / parts['A'][:, :, None, None]).clamp(0, 1))
    assert torch.allclose(parts['t_raw'], t2, atol=1e-6)
    assert torch.allclose(parts['A'], estimate_atmospheric_light_from_t(x, t, 0.01).clamp(min=0.05), atol=1e-6)
    big = torch.rand(1, 3, 100, 130)
    with torch.no_grad():
        t_big = net(big)
    tiled = DehazeNetRestorer(str(weights), tile=64, tile_overlap=32, a_normalize=False)
    # the overlap is raised to 4 x the 11 px reach (tiled_forward ignores the outer quarter of an overlap): the
    # blended map equals the whole-image map up to float error
    assert torch.allclose(tiled.estimate(big)['t_raw'], t_big, atol=1e-5)
    with pytest.raises(ValueError, match='tile > 44'):
        DehazeNetRestorer(str(weights), tile=40, tile_overlap=8, a_normalize=False).estimate(big)


def test_restorer_errors(tmp_path):
    with pytest.raises(ValueError, match='train_DehazeNet'):
        DehazeNetRestorer(None)
    with pytest.raises(FileNotFoundError, match='nope.pth'):
        DehazeNetRestorer(str(tmp_path / 'nope.pth'))
    weights = tmp_path / 'w.pth'
    _save_weights(weights)
    with pytest.raises(ValueError, match=r"dehazenet: unknown key\(s\) \['omega'\]; allowed: .*'allow_unsafe_pickle'"):
        DehazeNetRestorer(str(weights), omega=0.9)
    with pytest.raises(ValueError, match='dehazenet.t0: expected a number > 0 and < 1, got 0'):
        DehazeNetRestorer(str(weights), t0=0)
    other = tmp_path / 'other.pth'
    _save_weights(other, num_features=8)
    with pytest.raises(ValueError, match='does not fit'):
        DehazeNetRestorer(str(other))


# --------------------------------------------------------------------------------------------------------- training
def _transmission_mse(net, folder, n=64, seed=123):
    """MSE of t on a fixed set of synthetic patches (same recipe as the dataset, own RNG)."""
    rng = np.random.default_rng(seed)
    files = sorted(glob.glob(os.path.join(folder, '*.png')))
    imgs = [cv2.imread(p)[..., ::-1].astype(np.float32) / 255 for p in files]
    xs, ts = [], []
    for i in range(n):
        img = imgs[i % len(imgs)]
        y, x = rng.integers(0, img.shape[0] - 15), rng.integers(0, img.shape[1] - 15)
        t = rng.uniform(0.01, 1.0)
        xs.append(img[y:y + 16, x:x + 16] * t + (1 - t))
        ts.append(t)
    x = torch.from_numpy(np.stack(xs)).permute(0, 3, 1, 2).float()
    with torch.no_grad():
        pred = net.eval()(x)
    return float(((pred - torch.tensor(ts, dtype=torch.float32)[:, None, None, None])**2).mean())


def test_training_entry_point_lowers_transmission_mse(tmp_path):
    data = str(tmp_path / 'data')
    make_pair_dataset(data, n_train=4, n_test=2, size=40)
    init = tmp_path / 'init.pth'
    init_net = _save_weights(init, seed=0)
    opt = dict(
        name='dehazenet_tiny', model_type='DehazeNetModel', num_gpu=0, manual_seed=0,
        datasets=dict(
            train=dict(name='patches', type='TransmissionPatchDataset', dataroot_gt=os.path.join(data, 'train', 'GT'),
                       io_backend=dict(type='disk'), patch_size=16, patches_per_image=200, cache_images=True,
                       use_hflip=True, use_rot=False, num_worker_per_gpu=0, batch_size_per_gpu=32,
                       dataset_enlarge_ratio=1, prefetch_mode=None),
            val=dict(name='pairs', type='PairedImageDataset', dataroot_gt=os.path.join(data, 'test', 'GT'),
                     dataroot_lq=os.path.join(data, 'test', 'hazy'), filename_tmpl='{}', io_backend=dict(type='disk'),
                     scale=1)),
        network_g=dict(type='DehazeNet'),
        path=dict(pretrain_network_g=str(init), param_key_g='params', strict_load_g=True, resume_state=None),
        train=dict(ema_decay=0, optim_g=dict(type='Adam', lr=2e-3, betas=[0.9, 0.999]), total_iter=60,
                   warmup_iter=-1, scheduler=dict(type='MultiStepLR', milestones=[1000], gamma=0.5),
                   pixel_opt=dict(type='MSELoss', loss_weight=1.0, reduction='mean')),
        val=dict(val_freq=60, save_img=False, recovery=dict(gf_radius=8),
                 metrics=dict(psnr=dict(type='calculate_psnr_dehaze'), ssim=dict(type='calculate_ssim_dehaze'))),
        logger=dict(print_freq=20, save_checkpoint_freq=60, use_tb_logger=False),
        dist_params=dict(backend='gloo', port=29500))
    yml = tmp_path / 'train.yml'
    yml.write_text(yaml.safe_dump(opt))
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS='1')
    proc = subprocess.run([sys.executable, TRAIN, '-opt', str(yml)], cwd=str(tmp_path), env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ckpt = tmp_path / 'experiments' / 'dehazenet_tiny' / 'models' / 'net_g_latest.pth'
    trained = load_network_weights(DehazeNet(), str(ckpt))
    before = _transmission_mse(init_net, os.path.join(data, 'train', 'GT'))
    after = _transmission_mse(trained, os.path.join(data, 'train', 'GT'))
    print(f'transmission MSE on 64 fixed patches: {before:.4f} -> {after:.4f}')
    assert after < 0.5 * before, (before, after)
    log = open(glob.glob(str(tmp_path / 'experiments' / 'dehazenet_tiny' / 'train_*.log'))[0]).read()
    assert re.search(r'l_pix: [0-9.e+-]+', log)
    psnr = re.search(r'# psnr: ([0-9.]+)', log)  # validation: PSNR of the recovered J against GT, not of t
    assert psnr and 5 < float(psnr.group(1)) < 60


def test_model_rejects_bad_options(tmp_path):
    from basicsr.models import build_model
    base = dict(name='x', model_type='DehazeNetModel', num_gpu=0, is_train=False, dist=False, rank=0, world_size=1,
                network_g=dict(type='DehazeNet'), path=dict(pretrain_network_g=None), val=dict(recovery=dict()))
    model = build_model(dict(base))
    lq = torch.rand(1, 3, 20, 24)
    model.feed_data({'lq': lq, 'gt': torch.rand(1, 3, 20, 24)})
    model.test()
    assert model.output.shape == (1, 3, 20, 24) and model.t_pred.shape == (1, 1, 20, 24)
    with pytest.raises(ValueError, match=r"val.recovery: unknown key\(s\) \['omega'\]"):
        build_model(dict(base, val=dict(recovery=dict(omega=0.9))))
    with pytest.raises(ValueError, match="val.recovery.gf_eps: expected a number > 0, got '0.001' \\(str\\)"):
        build_model(dict(base, val=dict(recovery=dict(gf_eps='0.001'))))  # text where YAML must give a number
    with pytest.raises(ValueError, match='transmission net'):
        build_model(dict(base, network_g=dict(type='AODNet')))


@pytest.mark.parametrize('name', ['train_DehazeNet_demo', 'train_DehazeNet_RESIDE6K', 'test_DehazeNet_demo',
                                  'test_DehazeNet_RESIDE6K'])
def test_option_files_build(name, tmp_path):
    folder = 'train' if name.startswith('train') else 'test'
    with open(os.path.join(ROOT, 'options', folder, f'{name}.yml'), encoding='utf-8') as f:
        opt = yaml.safe_load(f)
    assert opt['model_type'] == 'DehazeNetModel'
    net = build_network(dict(opt['network_g']))
    assert sum(p.numel() for p in net.parameters()) == 8305
    # the shipped recovery keys are the defaults, written out (atmo_mode 'grey' is the old 'brightest_grey')
    assert DehazeNetRecoveryParams.from_mapping(opt['val']['recovery'], 'val.recovery') == DehazeNetRecoveryParams()
    if folder == 'train':
        train = dict(opt['datasets']['train'], dataroot_gt=_clean_folder(str(tmp_path / 'clean')), phase='train')
        assert train['type'] == 'TransmissionPatchDataset'
        assert build_dataset(train)[0]['gt'].shape == (1, 16, 16)
        assert opt['train']['pixel_opt']['type'] == 'MSELoss'
