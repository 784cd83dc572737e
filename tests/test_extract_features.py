"""scripts/extract_clip_features.py end to end with a tiny CLIP: folder and LMDB, resume, errors, dataset use."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch
import yaml
from torch.utils.data import DataLoader

import mixcl_arch  # noqa: F401  (before basicsr)
from _clip_helpers import TINY_CFG, make_pairs, make_tiny_clip, tiny_clip_opt
from basicsr.data import build_dataset
from mixcl_arch.clip.prior import CLIPPrior
from mixcl_arch.clip.store import FeatureStore

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, 'scripts', 'extract_clip_features.py')


def load_script():
    spec = importlib.util.spec_from_file_location('extract_clip_features', SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('extract')
    clip_file = make_tiny_clip(tmp / 'clip.pt')
    cfg = tmp / 'cfg.json'
    cfg.write_text(json.dumps(TINY_CFG))
    root = str(tmp / 'data' / 'train')
    names = make_pairs(root, n=5, size=(24, 28))
    from basicsr.utils.lmdb_util import make_lmdb_from_imgs
    make_lmdb_from_imgs(os.path.join(root, 'hazy'), os.path.join(root, 'hazy.lmdb'), [n + '.png' for n in names],
                        names, multiprocessing_read=False)
    return dict(tmp=tmp, clip=clip_file, cfg=str(cfg), root=root, names=names)


def cli(setup, *extra):
    return ['--model', 'mixcl-tiny-clip', '--model-cfg', setup['cfg'], '--pretrained', setup['clip'],
            '--batch-size', '2', '--num-workers', '0', '--quiet', '--device', 'cpu'] + list(extra)


def test_folder_and_lmdb_give_the_same_features(setup, capsys):
    mod = load_script()
    out_disk, out_lmdb = str(setup['tmp'] / 'disk.pt'), str(setup['tmp'] / 'lmdb.pt')
    assert mod.main(cli(setup, '--dataroot', os.path.join(setup['root'], 'hazy'), '--out', out_disk,
                        '--prompt-set', 'density=thin haze,dense haze')) == 0
    assert mod.main(cli(setup, '--dataroot', os.path.join(setup['root'], 'hazy.lmdb'), '--out', out_lmdb,
                        '--prompt-set', 'density=thin haze,dense haze', '--num-workers', '2')) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    assert [s['backend'] for s in lines] == ['disk', 'lmdb'] and all(s['new'] == 5 for s in lines)
    assert sum(lines[0]['per_domain'].values()) == 5 and 0.5 <= lines[0]['mean_confidence'] <= 1
    a, b = FeatureStore.load(out_disk), FeatureStore.load(out_lmdb)
    assert sorted(a.names) == sorted(b.names) == setup['names']
    for n in setup['names']:
        assert torch.allclose(a.get(n)['image_emb'], b.get(n)['image_emb'], atol=1e-6)
    meta = a.meta
    assert meta['model'] == 'mixcl-tiny-clip' and meta['pretrained'] == 'clip.pt'
    assert len(meta['pretrained_sha256']) == 64
    assert meta['domains'] == ['indoor', 'outdoor'] and meta['templates'] == ['a photo of a {}']
    assert meta['prompt_sets']['density']['classes'] == ['thin haze', 'dense haze'] and meta['embed_dim'] == 512
    # the features equal CLIPPrior on the PIL path (open_clip's own transform)
    from PIL import Image
    prior = CLIPPrior.from_opt(tiny_clip_opt(setup['clip'], prompt_sets={'density': ['thin haze', 'dense haze']}))
    pix = prior.preprocess(Image.open(os.path.join(setup['root'], 'hazy', 'img_003.png')).convert('RGB'))[None]
    ref = prior.from_pixels(pix)
    assert torch.allclose(a.get('img_003')['image_emb'], ref['image_emb'][0], atol=1e-5)
    assert torch.allclose(a.get('img_003')['density_probs'], ref['density_probs'][0], atol=1e-5)


def test_resume_skips_done_names_and_checks_provenance(setup, capsys):
    mod = load_script()
    out = str(setup['tmp'] / 'resume.pt')
    hazy = os.path.join(setup['root'], 'hazy')
    prior = CLIPPrior.from_opt(tiny_clip_opt(setup['clip']))
    store = FeatureStore.from_prior(prior)
    fake = {'probs': torch.tensor([[0.25, 0.75]]), 'image_emb': torch.ones(1, 512)}
    store.add(['img_001'], fake)  # marker row: a re-run must keep it, not recompute it
    store.save(out)
    assert mod.main(cli(setup, '--dataroot', hazy, '--out', out)) == 0
    s = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert s['new'] == 4 and s['skipped'] == 1 and s['images'] == 5
    back = FeatureStore.load(out)
    assert torch.equal(back.get('img_001')['probs'], fake['probs'][0])
    mtime = os.path.getmtime(out)
    assert mod.main(cli(setup, '--dataroot', hazy, '--out', out)) == 0
    s = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert s['new'] == 0 and s['skipped'] == 5 and os.path.getmtime(out) == mtime  # nothing to do: not rewritten
    with pytest.raises(ValueError, match='other CLIP options.*templates.*--overwrite'):
        mod.main(cli(setup, '--dataroot', hazy, '--out', out, '--templates', 'a hazy {}'))
    assert mod.main(cli(setup, '--dataroot', hazy, '--out', out, '--overwrite')) == 0
    assert not torch.equal(FeatureStore.load(out).get('img_001')['probs'], fake['probs'][0])
    assert not [f for f in os.listdir(setup['tmp']) if f.endswith('.tmp')]


def test_periodic_atomic_saves(setup, monkeypatch):
    mod = load_script()
    out = str(setup['tmp'] / 'periodic.pt')
    saved = []
    orig = FeatureStore.save

    def spy(self, path):
        saved.append(len(self))
        return orig(self, path)

    monkeypatch.setattr(FeatureStore, 'save', spy)
    assert mod.main(cli(setup, '--dataroot', os.path.join(setup['root'], 'hazy'), '--out', out,
                        '--save-every', '1')) == 0
    assert saved == [2, 4, 5, 5] or saved == [2, 4, 5]


def test_opt_file_jobs_meta_file_and_the_conditioner_reads_the_store(setup, tmp_path, capsys):
    from types import SimpleNamespace

    from mixcl_arch.conditioning.conditioner import CondBatch, build_conditioner
    from mixcl_arch.conditioning.config import ConditioningConfig
    mod = load_script()
    store = str(tmp_path / 'from_opt.pt')
    opt = {'clip': tiny_clip_opt(setup['clip']), 'conditioning': {'source': 'store', 'mode': 'hard'},
           'datasets': {'train': {'name': 't', 'type': 'CLIPPairedImageDataset', 'phase': 'train',
                                  'dataroot_lq': os.path.join(setup['root'], 'hazy'),
                                  'dataroot_gt': os.path.join(setup['root'], 'GT'),
                                  'meta_file': os.path.join(setup['root'], 'meta.csv'),
                                  'feature_store': store, 'gt_size': 16, 'io_backend': {'type': 'disk'}}}}
    yml = tmp_path / 'opt.yml'
    yml.write_text(yaml.safe_dump(opt))
    assert mod.main(['-opt', str(yml), '--batch-size', '4', '--num-workers', '0', '--quiet']) == 0
    assert json.loads(capsys.readouterr().out.strip())['new'] == 5
    # training reads it: the dataset serves keys and its store, the run's conditioner (same options) looks them up
    batch = next(iter(DataLoader(build_dataset(opt['datasets']['train']), batch_size=5, num_workers=2)))
    cfg = ConditioningConfig.from_options(opt)
    cond = build_conditioner(cfg, SimpleNamespace(num_cond=1, cond_dim=512), stores=[store])
    got = cond(CondBatch.from_data(batch, batch['lq']))
    prior = CLIPPrior.from_opt(cfg.clip)
    loaded = FeatureStore.load(store)
    assert got.shape == (5, 1, 512) and sorted(loaded.names) == sorted(batch['key'])
    text = prior.domain_text[loaded.get_rows(loaded.rows(list(batch['key'])))['probs'].argmax(1)]
    torch.testing.assert_close(got[:, 0], text, atol=1e-5, rtol=0)  # hard: the likelier domain's text feature


def test_options_come_from_the_conditioning_config_with_the_flags_on_top(tmp_path):
    mod = load_script()
    opt = {'clip': {'model': 'RN50', 'domains': ['day', 'night']},
           'cliphaze_cond': {'crop': 32, 'stride': 16, 'short_side': None}}
    cfg = mod.conditioning_options(mod.parse_args(['--model', 'ViT-B-16', '--density-source', 'dcp',
                                                   '--dcp-param', 'omega=0.9']), opt)
    assert cfg.clip.as_dict() == {'model': 'ViT-B-16', 'domains': ['day', 'night']}  # the flag replaced one key
    c = cfg.cliphaze
    assert (c.density_source, c.crop, c.stride, c.short_side) == ('dcp', 32, 16, None)
    assert c.embedding_source == 'standin' and dict(c.dcp) == {'omega': '0.9'}  # derived from the merged options
    # the old places are refused with the new one (the config is the one reader of these sections)
    old = {'datasets': {'train': {'cliphaze_cond': {'density_source': 'dcp'}}}}
    with pytest.raises(ValueError, match='datasets.train.cliphaze_cond: this setting moved to the top-level'):
        mod.conditioning_options(mod.parse_args(['--density']), old)
    with pytest.raises(ValueError, match='clip.nonsense: unknown CLIP option'):
        mod.conditioning_options(mod.parse_args([]), {'clip': {'nonsense': 1}})


def test_missing_weights_and_bad_input_exit_early(setup, tmp_path):
    env = dict(os.environ, HOME=str(tmp_path), HF_HOME=str(tmp_path / 'hf'))
    res = subprocess.run([sys.executable, SCRIPT, '--dataroot', os.path.join(setup['root'], 'hazy'), '--out',
                          str(tmp_path / 'x.pt'), '--model', 'ViT-B-32', '--pretrained', 'openai', '--quiet'],
                         capture_output=True, text=True, env=env, timeout=120, cwd=str(tmp_path))
    assert res.returncode == 2 and '--pretrained' in res.stderr and 'clip.pretrained' in res.stderr
    assert not (tmp_path / 'x.pt').exists()
    mod = load_script()
    os.makedirs(tmp_path / 'empty')
    with pytest.raises(ValueError, match='No images'):
        mod.main(cli(setup, '--dataroot', str(tmp_path / 'empty'), '--out', str(tmp_path / 'y.pt')))
    with pytest.raises(ValueError, match='Nothing to do'):
        mod.main(cli(setup))
