"""CLIPHazeNet everywhere the other networks are (issue 14 item 4): training and validation through
mixcl_arch/train.py on a feature store with density maps and embeddings (the DCP stand-in), online conditioning in
the model, the inference CLI with tiles, the quality benchmark and the option files. The DDP run is in
tests/test_ddp.py."""
import csv
import os

import cv2
import numpy as np
import pytest
import torch
from basicsr.data import build_dataset
from basicsr.models import build_model

from _clip_helpers import cliphaze_online, make_tiny_clip, tiny_clip_opt
from _train_helpers import (ROOT, load_script, make_pair_dataset, run_entry, tiny_train_opt, validation_values,
                            write_yaml)
from mixcl_arch import restorers
from mixcl_arch.archs.cliphaze_arch import CAM, CLIPHazeNet
from mixcl_arch.clip.cliphaze_cond import CLIPHazeCondConfig, dcp_density
from mixcl_arch.clip.prior import CLIPPrior
from mixcl_arch.clip.store import FeatureStore
from mixcl_arch.conditioning.config import ConditioningConfig
from mixcl_arch.data.clip_data_util import standin_text_feature
from mixcl_arch.dehaze import main as dehaze_main
from mixcl_arch.utils.checkpoint import network_meta, save_weights_file
from mixcl_arch.utils.options import OptionError, load_yaml_file
from mixcl_arch.utils.tiling import tile_starts
from test_options import kind
from test_tiling import _seam_excess, _smooth_image

pytestmark = pytest.mark.usefixtures('one_thread')

TINY = dict(type='CLIPHazeNet', width=4, depths=[1, 1, 1], bottleneck_depth=1, d_state=4, film_hidden=8,
            data_range='unit')
DCP_COND = dict(density_source='dcp', store_scale=8)  # the offline stand-in: NOT CLIP
DOMAINS = ('indoor', 'outdoor')


_load_script = load_script


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    """datasets/tiny/{train,test}: 40x40 pairs, meta.csv with alternating domains, a DCP stand-in feature store."""
    root = tmp_path_factory.mktemp('cliphaze_pipeline')
    tiny = root / 'datasets' / 'tiny'
    make_pair_dataset(str(tiny), n_train=4, n_test=2)
    extract = _load_script('extract_clip_features')
    for split in ('train', 'test'):
        names = sorted(os.listdir(tiny / split / 'hazy'))
        with open(tiny / split / 'meta.csv', 'w', newline='') as f:
            w = csv.writer(f)
            w.writerow(['hazy', 'gt', 'domain'])
            w.writerows([n, n, DOMAINS[i % 2]] for i, n in enumerate(names))
        assert extract.main(['--dataroot', str(tiny / split / 'hazy'), '--meta-file', str(tiny / split / 'meta.csv'),
                             '--out', str(tiny / f'cliphaze_{split}.pt'), '--density', '--density-source', 'dcp',
                             '--num-workers', '0', '--quiet']) == 0
    return root


def _dataset_opt(split, train):
    """CLIPPairedImageDataset options over the fixture's data, relative to its root (its store holds the density maps
    and embeddings; the run's conditioning section reads them)."""
    base = os.path.join('datasets', 'tiny')
    opt = dict(name=f'tiny_{split}', type='CLIPPairedImageDataset', dataroot_lq=os.path.join(base, split, 'hazy'),
               dataroot_gt=os.path.join(base, split, 'GT'), meta_file=os.path.join(base, split, 'meta.csv'),
               feature_store=os.path.join(base, f'cliphaze_{split}.pt'), io_backend=dict(type='disk'))
    if train:
        opt.update(gt_size=32, use_hflip=True, use_rot=False, num_worker_per_gpu=0, batch_size_per_gpu=2,
                   dataset_enlarge_ratio=1)
    return opt


# train.py with a model that records what reaches CLIPHazeNet's forward (a pre-hook on the bare net)
RECORD_ENTRY = '''
import sys
sys.path.insert(0, {root!r})
import torch
import mixcl_arch
from basicsr.utils.registry import MODEL_REGISTRY
from mixcl_arch.models.mixcl_dehaze_model import MixCLDehazeModel


@MODEL_REGISTRY.register()
class InputRecordingModel(MixCLDehazeModel):
    def __init__(self, opt):
        super().__init__(opt)
        self.seen = []

        def hook(module, args, kwargs):
            self.seen.append(dict(training=module.training, shape=tuple(args[0].shape),
                                  **{{k: kwargs[k].detach().cpu().clone() for k in ('density', 'embedding')
                                     if kwargs.get(k) is not None}}))
        self.get_bare_model(self.net_g).register_forward_pre_hook(hook, with_kwargs=True)

    def nondist_validation(self, *args, **kwargs):
        super().nondist_validation(*args, **kwargs)
        torch.save(self.seen, 'seen.pth')


from mixcl_arch.train import main
main()
'''


def test_train_py_feeds_the_stored_density_and_embedding_and_validates(data):
    # one validation, when training ends (BasicSR validates then)
    opt = tiny_train_opt('unused', name='tiny_cliphaze', total_iter=3, periods=3, save_freq=3, val_freq=4,
                         net=dict(TINY))
    opt['datasets'] = dict(train=_dataset_opt('train', True), val=_dataset_opt('test', False))
    opt['cliphaze_cond'] = dict(DCP_COND)
    opt['conditioning'] = dict(source='store')
    opt['model_type'] = 'InputRecordingModel'
    yml = write_yaml(opt, data / 'train.yml')
    script = data / 'record_train.py'
    script.write_text(RECORD_ENTRY.format(root=ROOT))
    log = run_entry(str(script), ['-opt', yml], cwd=str(data))
    assert 'Conditioning of network_g (density, embedding): store.' in log  # the stored maps, by key and crop
    assert len(validation_values(log, 'psnr')) == 1
    seen = torch.load(data / 'seen.pth', weights_only=True)
    train_calls = [c for c in seen if c['training']]
    val_calls = [c for c in seen if not c['training']]
    assert len(train_calls) == 3 and len(val_calls) == 2
    stand_ins = torch.stack([standin_text_feature(d) for d in DOMAINS])
    for call in train_calls:  # 32 px crops: the 1/8 map of the crop, each image's domain stand-in
        assert call['shape'] == (2, 3, 32, 32) and call['density'].shape == (2, 1, 4, 4)
        assert all((stand_ins == e).all(dim=1).any() for e in call['embedding'])
        assert 0 <= call['density'].min() and call['density'].max() <= 1 and call['density'].std() > 0
    store = FeatureStore.load(str(data / 'datasets' / 'tiny' / 'cliphaze_test.pt'))
    for i, call in enumerate(val_calls):  # full test images: the stored map as it is
        name = f'{i:03d}'
        torch.testing.assert_close(call['density'][0], store.get_spatial('density', store.index[name]).float())
        assert torch.equal(call['embedding'][0], standin_text_feature(DOMAINS[i % 2]))
    ckpt = data / 'experiments' / 'tiny_cliphaze' / 'models' / 'net_g_latest.pth'
    assert torch.load(ckpt, weights_only=True)['meta']['arch'] == 'CLIPHazeNet'


def _model(tmp_path, tile=None, **net_extra):
    opt = dict(name='unit', model_type='MixCLDehazeModel', num_gpu=0, is_train=False, dist=False, rank=0,
               world_size=1, manual_seed=0, datasets={}, network_g=dict(TINY, **net_extra),
               cliphaze_cond=dict(DCP_COND, standin_domain='outdoor'),
               path=dict(pretrain_network_g=None, strict_load_g=True, visualization=str(tmp_path / 'vis')),
               val=dict(save_img=False, metrics={}))
    if tile is not None:
        opt['val']['tile'] = dict(tile_size=tile[0], tile_pad=tile[1])
    torch.manual_seed(0)  # the net's initial weights do not depend on the tests run before
    model = build_model(opt)
    _make_cam_matter(model.net_g)
    return model


def _make_cam_matter(net):
    """A new CAM averages the paths whatever its inputs (zero-initialised last layers): give it weights."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, CAM):
                m.to_weight.weight.copy_(torch.randn(m.to_weight.weight.shape, generator=g))
                if m.use_embedding:
                    m.film[-1].weight.copy_(torch.randn(m.film[-1].weight.shape, generator=g) * 0.1)
    return net.eval()


def _recorder(net):
    calls = []
    net.register_forward_pre_hook(lambda module, args, kwargs: calls.append((args[0].clone(), dict(kwargs))),
                                  with_kwargs=True)
    return calls


def test_model_computes_missing_conditioning_online_and_tiles_the_density(tmp_path):
    # the CLI test's tiling (tests/test_dehaze_cli.py): net input 96, overlap 48, on an image that needs no padding
    whole, tiled = _model(tmp_path / 'a'), _model(tmp_path / 'b', tile=(48, 24))
    tiled.net_g.load_state_dict(whole.net_g.state_dict())
    x = _smooth_image(144, 176)
    calls = _recorder(whole.net_g)
    whole.feed_data(dict(lq=x))  # no density / embedding in the batch: computed online from cliphaze_cond
    whole.test()
    density, embedding = cliphaze_online(None, x, CLIPHazeCondConfig(**DCP_COND), ['outdoor'])
    torch.testing.assert_close(calls[0][1]['density'], density)
    assert torch.equal(calls[0][1]['embedding'], embedding) and len(calls) == 1
    # a batch's domain label (the pair CSV's) picks the stand-in embedding; conditioning tensors in it are not read
    whole.feed_data(dict(lq=x, domain=['indoor'], density=torch.rand(1, 1, 12, 14)))
    whole.test()
    torch.testing.assert_close(calls[1][1]['density'], density)
    assert torch.equal(calls[1][1]['embedding'], standin_text_feature('indoor')[None])
    changed = whole.output.clone()

    tile_calls = _recorder(tiled.net_g)
    tiled.feed_data(dict(lq=x))
    tiled.test()
    whole.feed_data(dict(lq=x))
    whole.test()
    ys, xs = tile_starts(144, 96, 48, 16), tile_starts(176, 96, 48, 16)  # on the net's 16 px grid
    assert len(tile_calls) == len(ys) * len(xs) > 1
    for (tile, kw), (y0, x0) in zip(tile_calls, [(y, x_) for y in ys for x_ in xs]):
        assert torch.equal(tile, x[..., y0:y0 + 96, x0:x0 + 96])
        torch.testing.assert_close(kw['density'], density[..., y0:y0 + 96, x0:x0 + 96])  # its own slice
        assert torch.equal(kw['embedding'], embedding)
    err = (tiled.output - whole.output).abs()
    assert err.mean() < 5e-3 and err.max() < 0.1, (err.mean(), err.max())  # the CLI's tolerance
    assert (changed - whole.output).abs().max() > 1e-4  # the domain's embedding reaches the output (7e-4)


def test_model_refuses_datasets_the_stored_density_cannot_serve(data, tmp_path, monkeypatch):
    """Checked when the model is built, before iteration 1: a train crop the 1/8 map cannot follow, a dataset
    without a store, a store made with other density options."""
    monkeypatch.chdir(data)  # the dataset paths are relative to the fixture's root

    def build(train=None, val=None, **cond):
        opt = dict(name='unit', model_type='MixCLDehazeModel', num_gpu=0, is_train=False, dist=False, rank=0,
                   world_size=1, manual_seed=0, network_g=dict(TINY), conditioning=dict(source='store'),
                   cliphaze_cond=dict(DCP_COND, **cond),
                   datasets=dict(train=dict(_dataset_opt('train', True), **(train or {})),
                                 val=dict(_dataset_opt('test', False), **(val or {}))),
                   path=dict(pretrain_network_g=None, strict_load_g=True, visualization=str(tmp_path / 'vis')),
                   val=dict(save_img=False, metrics={}))
        return build_model(opt)

    assert build().conditioner.source == 'store'
    with pytest.raises(OptionError, match=r'datasets\.train\.gt_size: 36 is not a multiple of 8'):
        build(train=dict(gt_size=36))
    with pytest.raises(OptionError, match=r'datasets\.val\.feature_store: missing'):
        build(val=dict(feature_store=None))
    with pytest.raises(ValueError, match='cliphaze_train.pt.*store_scale'):
        build(store_scale=4)


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
    """A tiny CLIPHazeNet with a CAM that depends on its inputs, saved as training saves it (arch recorded)."""
    torch.manual_seed(0)
    net_opt = dict(TINY)
    net = _make_cam_matter(CLIPHazeNet(**{k: v for k, v in net_opt.items() if k != 'type'}))
    path = str(tmp_path_factory.mktemp('cliphaze_ckpt') / 'net_g.pth')
    save_weights_file({'params': net.state_dict()}, path, meta=network_meta(net_opt, net))
    return path, net


def _image_folder(folder, img):
    os.makedirs(folder, exist_ok=True)
    assert cv2.imwrite(os.path.join(folder, 'big.png'), (img[..., ::-1] * 65535).round().astype(np.uint16))
    return str(folder)


def _read16(path):
    return cv2.imread(path, cv2.IMREAD_UNCHANGED)[..., ::-1] / 65535.0


def test_cli_computes_the_stand_in_conditioning_once_and_tiles_it_seamlessly(checkpoint, tmp_path, monkeypatch,
                                                                             capsys):
    weights, net = checkpoint
    x = _smooth_image(144, 176)
    src = _image_folder(tmp_path / 'in', x[0].permute(1, 2, 0).numpy())
    x = torch.from_numpy(_read16(os.path.join(src, 'big.png')).transpose(2, 0, 1).copy()).float()[None]
    seen = []
    real = restorers.run_net
    monkeypatch.setattr(restorers, 'run_net', lambda n, t, cond, r: (seen.append((t, cond)), real(n, t, cond, r))[1])
    base = ['-i', src, '--weights', weights, '--density-source', 'dcp', '--standin-domain', 'indoor', '--device',
            'cpu', '--ext', 'png']
    assert dehaze_main(base + ['-o', str(tmp_path / 'tiled'), '--tile', '96', '--tile-overlap', '48']) == 0
    assert 'NOT CLIP' in capsys.readouterr().err  # the stand-in is labelled
    density = dcp_density(x, CLIPHazeCondConfig(**DCP_COND))  # of the whole image
    ys, xs = tile_starts(144, 96, 48, 16), tile_starts(176, 96, 48, 16)
    assert len(seen) == len(ys) * len(xs) > 1
    for (tile, cond), (y0, x0) in zip(seen, [(y, x_) for y in ys for x_ in xs]):
        torch.testing.assert_close(tile, x[..., y0:y0 + 96, x0:x0 + 96])
        torch.testing.assert_close(cond['density'], density[..., y0:y0 + 96, x0:x0 + 96], atol=1e-5, rtol=0)
        assert torch.equal(cond['embedding'][0], standin_text_feature('indoor'))
    seen.clear()
    assert dehaze_main(base + ['-o', str(tmp_path / 'full'), '--tile', '0']) == 0
    assert len(seen) == 1
    with torch.no_grad():
        ref = net(x, density, standin_text_feature('indoor')[None]).clamp(0, 1)[0].permute(1, 2, 0).numpy()
    full, tiled = _read16(str(tmp_path / 'full' / 'big.png')), _read16(str(tmp_path / 'tiled' / 'big.png'))
    assert np.abs(full - ref).max() < 1e-4
    # the CLI's tolerance for tiled vs whole (tests/test_dehaze_cli.py::test_tiled_run_matches_untiled), no seams
    diff = np.abs(tiled - full)
    assert diff.mean() < 5e-3 and diff.max() < 0.1, (diff.mean(), diff.max())
    borders = sorted({c for s in xs for c in range(s - 3, s + 4)} | {c for s in xs for c in range(s + 92, s + 99)})
    as_tensor = lambda a: torch.from_numpy(a.transpose(2, 0, 1).copy())[None]  # noqa: E731
    assert _seam_excess(as_tensor(tiled), as_tensor(full), borders) < 0.03


def test_cli_clip_route_uses_the_clip_section_and_missing_weights_name_the_stand_in(checkpoint, tmp_path, capsys):
    weights, net = checkpoint
    clip_file = make_tiny_clip(tmp_path / 'clip.pt')
    cond = dict(crop=16, stride=8, short_side=24, scenes=['room'])  # small crops: fast with the tiny CLIP
    opt = write_yaml(dict(clip=tiny_clip_opt(clip_file), cliphaze_cond=cond), tmp_path / 'clip.yml')
    x = _smooth_image(40, 48)
    src = _image_folder(tmp_path / 'in', x[0].permute(1, 2, 0).numpy())
    assert dehaze_main(['-i', src, '-o', str(tmp_path / 'out'), '--weights', weights, '--opt', opt, '--tile', '0',
                        '--device', 'cpu', '--ext', 'png']) == 0
    x = torch.from_numpy(_read16(os.path.join(src, 'big.png')).transpose(2, 0, 1).copy()).float()[None]
    prior = CLIPPrior.from_opt(tiny_clip_opt(clip_file))
    with torch.no_grad():
        ref = net(x, *cliphaze_online(prior, x, CLIPHazeCondConfig.from_opt(cond))).clamp(0, 1)
    out = _read16(str(tmp_path / 'out' / 'big.png'))
    assert np.abs(out - ref[0].permute(1, 2, 0).numpy()).max() < 1e-4
    assert 'NOT CLIP' not in capsys.readouterr().err

    # no CLIP weights: the run stops and says how to use the stand-in; the stand-in embedding needs a domain
    args = ['-i', src, '-o', str(tmp_path / 'none'), '--weights', weights, '--device', 'cpu',
            '--clip-pretrained', str(tmp_path / 'missing.pt')]
    assert dehaze_main(args) == 1
    assert '--density-source dcp --standin-domain' in capsys.readouterr().err
    assert dehaze_main(args + ['--density-source', 'dcp']) == 1
    assert 'needs cliphaze_cond.standin_domain (--standin-domain' in capsys.readouterr().err
    assert not os.path.exists(tmp_path / 'none' / 'big.png')


def test_benchmark_row_with_macs(checkpoint, data, tmp_path):
    weights, _ = checkpoint
    bq = _load_script('benchmark_quality')
    opt = write_yaml(dict(cliphaze_cond=dict(DCP_COND, standin_domain='outdoor')), tmp_path / 'cond.yml')
    out = str(tmp_path / 'bench')
    spec = f'name=CLIPHaze,method=net,weights={weights},opt={opt},cliphaze_cond={{standin_domain: indoor}}'
    bq.main(['--data', str(data / 'datasets' / 'tiny' / 'test'), '--out', out, '--quiet', '--figure', '0',
             '--macs-size', '32', '--method', 'name=Hazy,method=hazy', '--method', spec])
    with open(os.path.join(out, 'summary.csv'), newline='') as f:
        rows = {r['method']: r for r in csv.DictReader(f) if r['domain'] == 'all'}
    row = rows['CLIPHaze']
    assert int(row['images']) == 2 and np.isfinite(float(row['psnr'])) and float(row['psnr']) != float(
        rows['Hazy']['psnr'])
    assert int(row['params']) == sum(p.numel() for p in checkpoint[1].parameters())
    assert row['macs_256'] != '' and int(row['macs_256']) > 0  # counted with a density map and an embedding


CLIPHAZE_FILES = sorted(os.path.join(d, f) for d in (os.path.join(ROOT, 'options', 'train'),
                                                      os.path.join(ROOT, 'options', 'test'))
                        for f in os.listdir(d) if 'CLIPHazeNet' in f)


def test_option_files_exist_and_are_consistent():
    names = {os.path.basename(f) for f in CLIPHAZE_FILES}
    stems = [f'{v}_RESIDE6K' for v in 'TSB'] + ['S_NHHAZE', 'S_DenseHaze', 'T_demo', 'T_demo_cam_none']
    assert names == {f'{kind_}_CLIPHazeNet_{s}.yml' for kind_ in ('train', 'test') for s in stems}
    for path in CLIPHAZE_FILES:
        opt = load_yaml_file(path)
        net = opt['network_g']
        assert net['type'] == 'CLIPHazeNet' and net['data_range'] == 'unit'
        if 'demo' not in path:  # the recipe kind, as tests/test_options.py checks for the other nets
            assert kind(path) == 'LEAN RECIPE'
        cfg = ConditioningConfig.from_options(opt)  # the one reader: no old-style keys, valid values
        conditioned = net.get('cam', 'full') != 'none'
        # a conditioned net reads its maps and embeddings from each dataset's store, checked against cliphaze_cond
        assert (cfg.source == 'store') == ('cliphaze_cond' in opt) == conditioned, path
        for ds in opt['datasets'].values():
            assert bool(ds.get('feature_store')) == conditioned
            if ds.get('gt_size'):
                assert ds['gt_size'] % cfg.cliphaze.store_scale == 0


@pytest.mark.parametrize('name', ['train_CLIPHazeNet_T_demo.yml', 'train_CLIPHazeNet_T_demo_cam_none.yml'])
def test_demo_yaml_datasets_build_on_a_dcp_store(name, data, monkeypatch):
    from basicsr.archs import build_network
    from torch.utils.data import default_collate

    from mixcl_arch.conditioning.conditioner import CondBatch, build_conditioner
    monkeypatch.chdir(data / 'datasets' / 'tiny')  # the demo's layout: data/{train,test}/...
    os.makedirs('data', exist_ok=True)
    for split in ('train', 'test'):
        if not os.path.exists(os.path.join('data', split)):
            os.symlink(os.path.join('..', split), os.path.join('data', split))
            os.symlink(os.path.join('..', f'cliphaze_{split}.pt'), os.path.join(split, 'cliphaze_dcp.pt'))
    opt = load_yaml_file(os.path.join(ROOT, 'options', 'train', name))
    train = dict(opt['datasets']['train'], phase='train', gt_size=32)  # the tiny images are 40 px
    item = default_collate([build_dataset(train)[0]])
    val = default_collate([build_dataset(dict(opt['datasets']['val'], phase='val'))[1]])
    stores = [ds['feature_store'] for ds in opt['datasets'].values() if ds.get('feature_store')]
    cond = build_conditioner(ConditioningConfig.from_options(opt), build_network(dict(opt['network_g'])),
                             stores=stores)
    if 'cam_none' in name:
        assert cond is None and not stores  # the ablation takes no conditioning
    else:
        on_crop, on_val = (cond(CondBatch.from_data(b, b['lq'])) for b in (item, val))
        assert on_crop['density'].shape == (1, 1, 4, 4) and on_val['density'].shape == (1, 1, 5, 5)
        assert torch.equal(on_val['embedding'][0], standin_text_feature('outdoor'))
