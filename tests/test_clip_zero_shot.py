"""scripts/clip_zero_shot.py with tiny random CLIP models: numbers against an independent open_clip computation."""
import csv
import importlib.util
import json
import os.path as osp

import cv2
import mixcl_arch  # noqa: F401  (patches basicsr first)
import numpy as np
import pytest
import torch

from _clip_helpers import TINY_CFG, TINY_NAME, make_pairs, make_tiny_clip, write_img

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
_spec = importlib.util.spec_from_file_location('clip_zero_shot', osp.join(ROOT, 'scripts', 'clip_zero_shot.py'))
zs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(zs)

CLASSES = ['aquarium_fish', 'bus', 'cat', 'tree']
TEMPLATES = ['a photo of a {}.', 'a blurry photo of a {}.']


COLOURS = [(230, 40, 40), (40, 230, 40), (40, 40, 230), (230, 230, 40)]


def _tiny_clip(path, seed):
    """The tiny CLIP with zero class and position embeddings: with random weights the class token otherwise
    dominates and every image gets the same class, which would leave the confusion checks one column wide."""
    make_tiny_clip(path, seed=seed)
    state = torch.load(path, weights_only=True)['state_dict']
    for key in ('visual.class_embedding', 'visual.positional_embedding'):
        state[key] = torch.zeros_like(state[key])
    torch.save({'state_dict': state}, path)
    return str(path)


@pytest.fixture(scope='module')
def clips(tmp_path_factory):
    """Two tiny CLIPs (same architecture, other weights, registered under two names) and their config file."""
    root = tmp_path_factory.mktemp('clips')
    cfg = root / 'tiny.json'
    cfg.write_text(json.dumps(TINY_CFG))
    return {'a': _tiny_clip(root / 'a.pt', seed=0), 'b': _tiny_clip(root / 'b.pt', seed=1), 'cfg': str(cfg)}


def _coloured(rng, ci, h=28, w=32):
    return np.clip(rng.normal(COLOURS[ci], 30, (h, w, 3)), 0, 255).astype(np.uint8)


def _folder(root, per_class=3):
    rng = np.random.default_rng(0)
    for ci, name in enumerate(CLASSES):
        for i in range(per_class):
            write_img(osp.join(root, name, f'{i}.png'), _coloured(rng, ci, 24 + 4 * i))
    return str(root)


def _independent(weights, paths, labels, classes, templates, topk):
    """Predictions straight from open_clip: ensemble text features, PIL preprocessing, argmax / top-k."""
    import open_clip
    from PIL import Image
    model, _, preprocess = open_clip.create_model_and_transforms(TINY_NAME, pretrained=weights)
    model.eval()
    tok = open_clip.get_tokenizer(TINY_NAME)
    with torch.no_grad():
        text = []
        for c in classes:
            f = model.encode_text(tok([t.format(c.replace('_', ' ')) for t in templates]))
            f = (f / f.norm(dim=-1, keepdim=True)).mean(0)
            text.append(f / f.norm())
        text = torch.stack(text)
        img = model.encode_image(torch.stack([preprocess(Image.open(p).convert('RGB')) for p in paths]))
        sims = (img / img.norm(dim=-1, keepdim=True)) @ text.T
    pred = sims.argmax(1).tolist()
    top = sims.topk(topk, dim=1).indices.tolist()
    confusion = np.zeros((len(classes), len(classes)), int)
    for t, q in zip(labels, pred):
        confusion[t, q] += 1
    return confusion, float(np.mean([t in tk for t, tk in zip(labels, top)]))


def _read(path):
    with open(path, newline='') as f:
        return list(csv.reader(f))


def test_classify_matches_independent_confusion(clips, tmp_path, capsys):
    data = _folder(tmp_path / 'data')
    out = tmp_path / 'out'
    args = ['classify', '--data', data, '--out', str(out), '--model', TINY_NAME, '--pretrained', clips['a'],
            '--model-cfg', f"{TINY_NAME}={clips['cfg']}", '--device', 'cpu', '--batch-size', '5', '--num-workers',
            '0', '--topk', '2', '--quiet', '--templates'] + TEMPLATES
    assert zs.main(args) == 0
    printed = json.loads(capsys.readouterr().out)
    paths = sorted(str(p) for p in (tmp_path / 'data').rglob('*.png'))
    labels = [CLASSES.index(osp.basename(osp.dirname(p))) for p in paths]
    confusion, top2 = _independent(clips['a'], paths, labels, CLASSES, TEMPLATES, 2)
    summary = json.loads((out / 'summary.json').read_text())
    assert summary == printed and summary['classes'] == CLASSES and summary['images'] == 12
    assert np.array_equal(np.array(summary['confusion']), confusion)
    assert (confusion.sum(0) > 0).sum() >= 3  # the images are not all given one class
    table = _read(out / 'confusion.csv')
    assert table[0] == ['true\\pred'] + CLASSES
    assert np.array_equal(np.array([r[1:] for r in table[1:]], int), confusion)
    assert summary['top1'] == pytest.approx(np.trace(confusion) / 12)
    assert summary['top2'] == pytest.approx(top2)
    per_class = {r[0]: r for r in _read(out / 'per_class.csv')[1:]}
    for i, c in enumerate(CLASSES):
        assert int(per_class[c][2]) == confusion[i, i]
        assert float(per_class[c][3]) == pytest.approx(confusion[i, i] / confusion[i].sum())
        assert summary['pred_counts'][c] == confusion[:, i].sum()
    preds = _read(out / 'predictions.csv')
    assert preds[0] == ['path', 'label', 'pred', 'correct', 'top5', 'p_top1'] and len(preds) == 13
    assert sum(int(r[3]) for r in preds[1:]) == np.trace(confusion)
    assert all(r[4].split('|')[0] == r[2] and len(r[4].split('|')) == 2 for r in preds[1:])
    # a re-run replaces its own files; a user's file in --out is never replaced
    assert zs.main(args) == 0
    (out / 'per_class.csv').write_text('mine')
    assert zs.main(args) == 1
    assert (out / 'per_class.csv').read_text() == 'mine' and 'not written by' in capsys.readouterr().err


def test_missing_weights_fail_before_any_output(clips, tmp_path, capsys):
    data = _folder(tmp_path / 'data', per_class=1)
    out = tmp_path / 'out'
    common = ['--data', data, '--out', str(out), '--model-cfg', f"{TINY_NAME}={clips['cfg']}", '--device', 'cpu',
              '--quiet', '--num-workers', '0']
    assert zs.main(['classify', '--model', TINY_NAME, '--pretrained', str(tmp_path / 'nope.pt')] + common) == 1
    err = capsys.readouterr().err
    assert 'CLIP weights file not found' in err and 'nope.pt' in err
    assert zs.main(['sweep', '--model', f"{TINY_NAME}={clips['a']}", '--model', 'RN50=/missing/rn50.pt',
                    '--model', 'ViT-B-32=/missing/vitb32.pt'] + common) == 1
    err = capsys.readouterr().err
    assert 'missing for 2 of 3 model(s)' in err and 'rn50.pt' in err and 'vitb32.pt' in err
    assert not out.exists() or not any(out.iterdir())


def test_sweep_over_two_models_on_a_meta_csv(clips, tmp_path, capsys):
    data = tmp_path / 'pairs'
    make_pairs(str(data), n=6, size=(28, 36))
    rng = np.random.default_rng(1)
    for i in range(6):  # coloured by domain, so the tiny models' predictions depend on the image
        write_img(str(data / 'hazy' / f'img_{i:03d}.png'), _coloured(rng, i % 2 + 1))
    cfg = clips['cfg']
    out = tmp_path / 'sweep'
    assert zs.main(['sweep', '--csv', str(data / 'meta.csv'), '--path-col', 'hazy', '--label-col', 'domain',
                    '--root', str(data / 'hazy'), '--out', str(out), '--model', f"{TINY_NAME}={clips['a']}",
                    '--model', f"tiny-b={clips['b']}", '--model-cfg', f'{TINY_NAME}={cfg}', '--model-cfg',
                    f'tiny-b={cfg}', '--device', 'cpu', '--num-workers', '0', '--quiet']) == 0
    printed = json.loads(capsys.readouterr().out)
    assert [m['model'] for m in printed['models']] == [TINY_NAME, 'tiny-b']
    assert printed['true_counts'] == {'indoor': 3, 'outdoor': 3}
    rows = {r['model']: r for r in csv.DictReader(open(out / 'sweep.csv', newline=''))}
    paths = [str(data / 'hazy' / f'img_{i:03d}.png') for i in range(6)]
    labels = [i % 2 for i in range(6)]  # make_pairs alternates indoor / outdoor
    for name, weights in ((TINY_NAME, clips['a']), ('tiny-b', clips['b'])):
        confusion, _ = _independent(weights, paths, labels, ['indoor', 'outdoor'], ['a photo of a {}'], 1)
        assert float(rows[name]['top1']) == pytest.approx(np.trace(confusion) / 6)
        assert [int(rows[name]['pred_indoor']), int(rows[name]['pred_outdoor'])] == confusion.sum(0).tolist()
        per_model = json.loads((out / name / 'summary.json').read_text())
        assert np.array_equal(np.array(per_model['confusion']), confusion)
    assert rows[TINY_NAME]['pred_indoor'] != rows['tiny-b']['pred_indoor']  # two models, two answers
    fig = cv2.imread(str(out / 'sweep.png'))
    assert fig is not None and fig.shape[0] > 200 and fig.shape[1] > 400 and fig.std() > 0


def test_labelled_set_errors(tmp_path):
    data = _folder(tmp_path / 'data', per_class=1)
    args = zs.parse_args(['classify', '--data', data, '--out', str(tmp_path / 'o'), '--classes', 'bus', 'cat'])
    with pytest.raises(ValueError, match=r"label\(s\) \['aquarium_fish', 'tree'\] are not in --classes"):
        zs.LabelledSet.from_args(args)
    (tmp_path / 'l.csv').write_text('file,label\na.png,x\n')
    args = zs.parse_args(['classify', '--csv', str(tmp_path / 'l.csv'), '--out', str(tmp_path / 'o')])
    with pytest.raises(ValueError, match=r"no column\(s\) \['path'\]"):
        zs.LabelledSet.from_args(args)
    args = zs.parse_args(['classify', '--csv', str(tmp_path / 'l.csv'), '--path-col', 'file', '--out', 'o'])
    with pytest.raises(FileNotFoundError, match='line 2: image .*a.png does not exist'):
        zs.LabelledSet.from_args(args)
    with pytest.raises(ValueError, match='--out .* lies inside the input'):
        zs.classify(zs.parse_args(['classify', '--data', data, '--out', osp.join(data, 'res')]))
