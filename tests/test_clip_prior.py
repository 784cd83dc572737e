"""CLIPPrior, weights resolution, conditioning stack and feature store, with a tiny random open_clip model."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import mixcl_arch  # noqa: F401
from _clip_helpers import TINY_CFG, TINY_NAME, make_tiny_clip, tiny_clip_opt
from mixcl_arch.clip.prior import CLIPPrior
from mixcl_arch.clip.store import FeatureStore, load_domain_text_features, provenance_mismatches
from mixcl_arch.clip.weights import CLIPWeightsError
from mixcl_arch.conditioning.vectors import build_condition

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETS = {'density': ['thin haze', 'moderate haze', 'dense haze']}


@pytest.fixture(scope='module')
def clip_file(tmp_path_factory):
    return make_tiny_clip(tmp_path_factory.mktemp('clip') / 'tiny_clip.pt')


@pytest.fixture(scope='module')
def prior(clip_file):
    return CLIPPrior.from_opt(tiny_clip_opt(clip_file, prompt_sets=SETS))


def test_local_file_loads_the_saved_weights(clip_file, prior):
    import open_clip
    sd = torch.load(clip_file, weights_only=True)['state_dict']
    got = prior.model.state_dict()
    assert set(sd) == set(got) and all(torch.equal(sd[k], got[k]) for k in sd)
    assert prior.provenance()['pretrained_sha256'] and prior.provenance()['embed_dim'] == 512
    # the text features are the model's own: recompute the reference way (one template, normalised)
    tok = open_clip.get_tokenizer(TINY_NAME)(['a photo of a indoor', 'a photo of a outdoor'])
    with torch.no_grad():
        ref = prior.model.encode_text(tok)
    ref = ref / ref.norm(dim=-1, keepdim=True)
    assert torch.allclose(prior.domain_text, ref, atol=1e-6)


def test_outputs_shapes_and_semantics(prior):
    torch.manual_seed(0)
    x = torch.rand(3, 3, 45, 61)
    out = prior(x)
    assert out['probs'].shape == (3, 2) and out['image_emb'].shape == (3, 512)
    assert torch.allclose(out['probs'].sum(1), torch.ones(3), atol=1e-5)
    assert torch.allclose(out['image_emb'].norm(dim=1), torch.ones(3), atol=1e-5)
    # probs = softmax(100 * cosine); hard = text of argmax; soft = probability-weighted
    pix = prior.preprocess_tensor(x)
    with torch.no_grad():
        img = prior.model.encode_image(pix)
    img = img / img.norm(dim=-1, keepdim=True)
    assert torch.allclose(out['probs'], (100 * img @ prior.domain_text.T).softmax(-1), atol=1e-5)
    assert torch.equal(out['text_hard'], prior.domain_text[out['probs'].argmax(1)])
    assert torch.allclose(out['text_soft'], out['probs'] @ prior.domain_text, atol=1e-6)
    assert out['density_probs'].shape == (3, 3) and out['density_text_soft'].shape == (3, 512)


def test_tensor_preprocessing_matches_open_clip_pil_transform(prior):
    from PIL import Image
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)
    img = np.array(Image.fromarray(img).resize((140, 100), Image.BILINEAR))  # smooth content, like photos
    pil = prior.preprocess(Image.fromarray(img))
    ten = prior.preprocess_tensor(torch.from_numpy(img).permute(2, 0, 1).float() / 255)[0]
    assert pil.shape == ten.shape == (3, 32, 32)
    assert (pil - ten).abs().mean() < 0.02 and (pil - ten).abs().max() < 0.2  # normalised units (std ~0.27)


def test_build_condition_order_and_errors(prior):
    out = prior(torch.rand(2, 3, 32, 32))
    cond = build_condition(out, 'hard', ['image', 'density', 'domain:soft', 'density:hard'])
    assert cond.shape == (2, 5, 512)
    assert torch.equal(cond[:, 0], out['text_hard']) and torch.equal(cond[:, 1], out['image_emb'])
    assert torch.equal(cond[:, 2], out['density_text_hard']) and torch.equal(cond[:, 3], out['text_soft'])
    assert torch.equal(build_condition(out, 'soft')[:, 0], out['text_soft'])
    with pytest.raises(ValueError, match='weather'):
        build_condition(out, 'hard', ['weather'])
    with pytest.raises(ValueError, match="mode must be one of"):
        build_condition(out, 'medium')


def test_store_roundtrip_and_exact_hard_soft(prior, tmp_path):
    out = prior(torch.rand(3, 3, 40, 40))
    store = FeatureStore.from_prior(prior).add(['a', 'sub/b'], {k: v[:2] for k, v in out.items()})
    store.add(['c'], {k: v[2:] for k, v in out.items()})
    path = str(tmp_path / 's.pt')
    store.save(path)
    assert not [f for f in os.listdir(tmp_path) if f.endswith('.tmp')]
    back = FeatureStore.load(path)
    assert back.names == ['a', 'sub/b', 'c'] and 'c' in back and 'd' not in back
    for i, name in enumerate(back.names):
        got = back.get(name)
        for key in ('probs', 'text_hard', 'text_soft', 'image_emb', 'density_probs', 'density_text_hard'):
            assert torch.equal(got[key], out[key][i]), key
    s = back.summary()
    assert s['images'] == 3 and sum(s['per_domain'].values()) == 3 and 0.5 <= s['mean_confidence'] <= 1
    feats = load_domain_text_features(path)
    assert torch.equal(feats['outdoor'], prior.domain_text[1])
    with pytest.raises(ValueError, match='already'):
        back.add(['a'], {k: v[:1] for k, v in out.items()})
    with pytest.raises(KeyError, match='1 image'):
        back.rows(['a', 'zzz'])


def test_store_rejects_foreign_and_broken_files(tmp_path):
    with pytest.raises(FileNotFoundError, match='extract_clip_features'):
        FeatureStore.load(tmp_path / 'none.pt')
    torch.save({'x': 1}, tmp_path / 'other.pt')
    with pytest.raises(ValueError, match='not a CLIP feature store'):
        FeatureStore.load(tmp_path / 'other.pt')
    (tmp_path / 'cut.pt').write_bytes(b'PK\x03\x04garbage')
    with pytest.raises(ValueError, match='cannot be read'):
        FeatureStore.load(tmp_path / 'cut.pt')


def test_provenance_mismatches(prior, clip_file, tmp_path):
    meta = prior.provenance()
    assert provenance_mismatches(meta, tiny_clip_opt(clip_file, prompt_sets=SETS), 512) == []
    assert any('model' in d for d in provenance_mismatches(meta, {'model': 'ViT-B-32'}))
    assert any('domains' in d for d in provenance_mismatches(meta, {'domains': ['day', 'night']}))
    assert any('templates' in d for d in provenance_mismatches(meta, {'templates': ['a {}']}))
    assert any('embed dim' in d for d in provenance_mismatches(meta, {}, embed_dim=768))
    assert any('density' in d for d in provenance_mismatches(meta, {'prompt_sets': {'density': ['fog']}}))
    other = make_tiny_clip(tmp_path / 'other.pt', seed=1)
    assert any('sha256' in d for d in provenance_mismatches(meta, {'pretrained': other}))
    assert any('pretrained' in d for d in provenance_mismatches(meta, {'pretrained': 'openai'}))


def test_missing_weights_fail_without_network_and_with_a_clear_message(tmp_path):
    """An open_clip tag with empty caches: CLIPWeightsError naming what to set, and no network probe (the hub flag
    set by conftest is honoured; the probe is replaced by one that fails the run)."""
    code = ('import mixcl_arch\nfrom mixcl_arch.clip import weights\nfrom mixcl_arch.clip.prior import CLIPPrior\n'
            'from mixcl_arch.clip.weights import CLIPWeightsError\n'
            'def no_network(*args, **kwargs):\n    raise AssertionError("network probe despite HF_HUB_OFFLINE")\n'
            'weights._reachable = no_network\n'
            'try:\n    CLIPPrior(model="ViT-B-32", pretrained="openai")\n'
            'except CLIPWeightsError as e:\n    print("ERR", e)\n')
    env = dict(os.environ, HF_HOME=str(tmp_path / 'hf'), XDG_CACHE_HOME=str(tmp_path / 'cache'), HOME=str(tmp_path))
    assert env['HF_HUB_OFFLINE'] == '1'  # empty ~/.cache/clip and HF cache, hub flagged offline
    res = subprocess.run([sys.executable, '-c', code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert res.stdout.startswith('ERR'), res.stderr[-2000:]
    assert 'clip.pretrained' in res.stdout and '--pretrained' in res.stdout
    assert 'open_clip_pytorch_model.bin' in res.stdout or 'ViT-B-32.pt' in res.stdout


def test_bad_options_and_missing_file(clip_file, tmp_path):
    with pytest.raises(CLIPWeightsError, match='not found.*clip.pretrained'):
        CLIPPrior.from_opt(tiny_clip_opt(tmp_path / 'nope.pt'))
    with pytest.raises(CLIPWeightsError, match='neither a file nor an open_clip tag'):
        CLIPPrior(model='ViT-B-32', pretrained='no_such_tag')
    with pytest.raises(ValueError, match='clip.colour: unknown CLIP option'):
        CLIPPrior.from_opt(tiny_clip_opt(clip_file, colour='red'))
    with pytest.raises(ValueError, match='placeholder'):
        CLIPPrior.from_opt(tiny_clip_opt(clip_file, templates=['a photo']))
    with pytest.raises(ValueError, match='two distinct'):
        CLIPPrior.from_opt(tiny_clip_opt(clip_file, domains=['indoor']))
    with pytest.raises(ValueError, match='Unknown open_clip model'):
        CLIPPrior(model='not-a-model', pretrained=clip_file)
    with pytest.raises(ValueError, match='different config'):
        CLIPPrior(model='ViT-B-32', pretrained=clip_file, model_cfg=TINY_CFG)
    torch.save({'state_dict': {'bogus': torch.zeros(1)}}, tmp_path / 'bad.pt')
    with pytest.raises(CLIPWeightsError, match='bad.pt'):
        CLIPPrior.from_opt(tiny_clip_opt(tmp_path / 'bad.pt'))


def test_templates_are_ensembled(clip_file):
    p = CLIPPrior.from_opt(tiny_clip_opt(clip_file, templates=['a photo of a {}', 'a hazy {} scene']))
    feats = [CLIPPrior.from_opt(tiny_clip_opt(clip_file, templates=[t])).domain_text for t in p.templates]
    mean = (feats[0] + feats[1]) / 2
    assert torch.allclose(p.domain_text, mean / mean.norm(dim=-1, keepdim=True), atol=1e-6)
