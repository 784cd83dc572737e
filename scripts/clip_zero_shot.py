#!/usr/bin/env python
"""CLIP zero-shot classification of a labelled image set, and a sweep of several CLIP models over one set.

Two sub-commands:

* ``classify``: one open_clip model (``--model``, ``--pretrained`` tag or local file) on a labelled set. Prints a
  JSON summary (top-1 / top-5 accuracy, per-class accuracy) and writes to ``--out``: ``summary.json``,
  ``predictions.csv`` (path, label, pred, correct, top5, p_top1), ``per_class.csv`` (class, images, correct,
  accuracy) and ``confusion.csv`` (rows: true class, columns: predicted class, counts). This redoes the lab report's
  Tables 3.x (ViT-B/32, ViT-L/14@336 on CIFAR-10/100 and labelled folders) given the weights.
* ``sweep``: the same for several models (the reference's ``clip.sh`` for the indoor/outdoor domain step: RN50,
  RN101, RN50x4, RN50x16, RN50x64, ViT-B/32, ViT-B/16, ViT-L/14, ViT-L/14@336px, all ``openai``), one folder per
  model under ``--out`` plus ``sweep.csv``, ``sweep.json`` and ``sweep.png`` (accuracy per model, and the
  distribution of the predictions per model next to the true one; matplotlib, Agg). The weights of every model are
  looked up before the first one runs, so a missing file fails at once and names them all.

Labelled sets:

* ``--data DIR``: ImageFolder layout, ``DIR/<class>/**/<image>``; classes are the sub-folder names, sorted;
* ``--csv FILE``: one row per image, the path in ``--path-col`` (default ``path``, relative to ``--root``, default
  the CSV's folder) and the class in ``--label-col`` (default ``label``); a pair CSV of
  ``scripts/make_haze_pairs.py`` works with ``--path-col hazy --label-col domain --root DIR/hazy``.

Classes default to the sorted labels; ``--classes`` fixes their order (and may add classes no image has). The text
of a class is its name with ``_`` read as a space (``aquarium_fish`` -> "a photo of a aquarium fish."). Several
``--templates`` are ensembled as in the CLIP paper: the class feature is the normalised mean of the normalised
text features (:class:`mixcl_arch.clip.prior.CLIPPrior`). Probabilities are softmax(100 * cosine), as the project's CLIP
step. Weights resolve through :mod:`mixcl_arch.clip.weights`: a missing file or an uncached tag without network
fails before any image is read, naming the file to get.

Examples::

    python scripts/clip_zero_shot.py classify --data datasets/cifar10_test --model ViT-B-32 --pretrained openai \\
        --out results/zs_cifar10_vitb32
    python scripts/clip_zero_shot.py classify --data datasets/cifar100_test --model ViT-L-14-336 \\
        --pretrained clip/ViT-L-14-336.safetensors --templates "a photo of a {}." "a blurry photo of a {}." \\
        --out results/zs_cifar100_vitl14_336
    python scripts/clip_zero_shot.py sweep --csv datasets/RESIDE-6K/test/meta.csv --path-col hazy \\
        --label-col domain --root datasets/RESIDE-6K/test/hazy --out results/domain_sweep
"""
import argparse
import csv
import io
import json
import os
import os.path as osp
import sys
import time

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

TOOL = 'clip-zero-shot'
PAPER_TEMPLATE = 'a photo of a {}.'  # the CLIP paper's default prompt
REFERENCE_TEMPLATE = 'a photo of a {}'  # the reference clip_text.py (the project's domain step)
# the reference clip.sh models in open_clip's names, all with OpenAI's weights
CLIP_SH_MODELS = ('RN50', 'RN101', 'RN50x4', 'RN50x16', 'RN50x64', 'ViT-B-32', 'ViT-B-16', 'ViT-L-14', 'ViT-L-14-336')


# ------------------------------------------------------------------------------------------------------ the data
class LabelledSet:
    """Image paths with class labels.

    Attributes:
        paths (list[str]): Image files.
        labels (list[int]): Class index of each image.
        classes (list[str]): Class names (labels as found), index order.
        source (str): The folder or CSV read.
    """

    def __init__(self, paths, labels, classes, source):
        self.paths, self.labels, self.classes, self.source = paths, labels, classes, source

    @classmethod
    def from_args(cls, args):
        """Read ``--data`` or ``--csv`` (exactly one) with ``--classes``.

        Raises:
            FileNotFoundError: Missing folder, CSV or image named in the CSV.
            ValueError: No images, a CSV without the columns, a label outside ``--classes``, fewer than 2 classes.
        """
        if bool(args.data) == bool(args.csv):
            raise ValueError('Give exactly one labelled set: --data DIR (ImageFolder) or --csv FILE.')
        rows = _image_folder(args.data) if args.data else _csv_rows(args.csv, args.path_col, args.label_col, args.root)
        source = args.data or args.csv
        if not rows:
            raise ValueError(f'{source}: no labelled images found (extensions {" ".join(IMG_EXTENSIONS)}).')
        found = sorted({label for _, label in rows})
        classes = list(args.classes) if args.classes else found
        if len(set(classes)) != len(classes) or len(classes) < 2:
            raise ValueError(f'--classes needs at least two distinct class names, got {classes}.')
        unknown = sorted(set(found) - set(classes))
        if unknown:
            raise ValueError(f'{source}: label(s) {unknown} are not in --classes {classes}.')
        index = {c: i for i, c in enumerate(classes)}
        return cls([p for p, _ in rows], [index[label] for _, label in rows], classes, source)


def _image_folder(root):
    if not osp.isdir(root):
        raise FileNotFoundError(f'--data folder not found: {root}')
    rows = []
    for cls_name in sorted(d for d in os.listdir(root) if osp.isdir(osp.join(root, d)) and not d.startswith('.')):
        folder = osp.join(root, cls_name)
        rows += [(osp.join(folder, rel), cls_name) for rel in scan_images(folder, allow_empty=True)]
    return rows


def _csv_rows(path, path_col, label_col, root):
    if not osp.isfile(path):
        raise FileNotFoundError(f'--csv file not found: {path}')
    with open(path, newline='', encoding='utf-8') as f:
        reader = csv.DictReader(f)
        missing = [c for c in (path_col, label_col) if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f'{path}: no column(s) {missing} (columns: {reader.fieldnames}); set --path-col and '
                             '--label-col.')
        rows = [(r[path_col], (r[label_col] or '').strip()) for r in reader]
    root = root or osp.dirname(osp.abspath(path))
    out = []
    for line, (rel, label) in enumerate(rows, start=2):
        full = osp.join(root, rel)
        if not label:
            raise ValueError(f'{path} line {line}: empty {label_col!r} for {rel!r}.')
        if not osp.isfile(full):
            raise FileNotFoundError(f'{path} line {line}: image {full} does not exist (paths are relative to '
                                    f'--root {root}).')
        out.append((full, label))
    return out


class _Images:
    """Decoded images (header-checked against the pixel limit) through the CLIP model's own eval transform."""

    def __init__(self, paths, preprocess):
        self.paths, self.preprocess = paths, preprocess

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        import numpy as np
        from PIL import Image

        rgb = decode_image(self.paths[i])
        return self.preprocess(Image.fromarray((np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8)))


# ------------------------------------------------------------------------------------------------- the model
def prompt_names(classes):
    """Class names as they go into the prompts ('_' read as a space)."""
    return [c.replace('_', ' ') for c in classes]


def load_model_cfgs(specs):
    """``--model-cfg NAME=FILE`` entries -> {model name: open_clip config dict}."""
    cfgs = {}
    for spec in specs or ():
        name, sep, path = spec.partition('=')
        if not sep or not name or not path:
            raise ValueError(f'--model-cfg {spec!r}: expected NAME=FILE (an open_clip model config JSON).')
        if not osp.isfile(path):
            raise FileNotFoundError(f'--model-cfg {name}: file not found: {path}')
        with open(path, encoding='utf-8') as f:
            cfgs[name.replace('/', '-')] = json.load(f)
    return cfgs


def prior_options(args, model, pretrained, classes, model_cfgs):
    """CLIPPrior keyword arguments for one model."""
    model = model.replace('/', '-')
    opt = {'model': model, 'pretrained': pretrained, 'device': args.device, 'dtype': args.dtype,
           'domains': prompt_names(classes), 'templates': args.templates, 'model_cfg': model_cfgs.get(model),
           'allow_download': not args.no_download, 'torchscript': args.clip_torchscript}
    if args.quick_gelu != 'auto':
        opt['quick_gelu'] = args.quick_gelu == 'true'
    return opt


def check_weights(models, args, model_cfgs):
    """Resolve the weights of every (model, pretrained) first; raises one CLIPWeightsError naming all missing."""
    from mixcl_arch.clip.weights import CLIPWeightsError, resolve_weights
    from mixcl_arch.clip.weights import register_model_cfg
    errors = []
    for model, pretrained in models:
        name = model.replace('/', '-')
        if name in model_cfgs:
            register_model_cfg(name, model_cfgs[name])
        try:
            resolve_weights(name, pretrained, allow_download=not args.no_download)
        except CLIPWeightsError as err:
            errors.append(f'- {name} ({pretrained}): {err}')
    if errors:
        raise CLIPWeightsError('CLIP weights missing for {} of {} model(s), nothing was run:\n{}'.format(
            len(errors), len(models), '\n'.join(errors)))


def zero_shot_probs(prior, paths, batch_size=64, num_workers=2, progress=True):
    """Class probabilities of every image.

    Args:
        prior (CLIPPrior): Model whose ``domains`` are the classes.
        paths (list[str]): N image files.

    Returns:
        Tensor: (N, C) float32 on CPU, softmax(100 * cosine) over the classes.
    """
    import torch
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    loader = DataLoader(_Images(paths, prior.preprocess), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers, pin_memory=prior.device.type == 'cuda')
    probs = []
    with torch.no_grad():
        for pixels in tqdm(loader, desc=prior.model_name, unit='batch', disable=not progress):
            probs.append(prior.from_pixels(pixels)['probs'].float().cpu())
    return torch.cat(probs)


# ----------------------------------------------------------------------------------------------- the numbers
def evaluate(probs, labels, classes, paths, topk=5):
    """Accuracy, per-class accuracy, confusion matrix and per-image rows.

    Args:
        probs (Tensor): (N, C) class probabilities.
        labels (list[int]): N true class indices.
        classes (list[str]): C class names.
        paths (list[str]): N image paths.
        topk (int): The k of top-k accuracy (at most C).

    Returns:
        dict: 'top1', 'topk' (fractions), 'k', 'per_class' ({class: {'images', 'correct', 'accuracy'}}; accuracy
        None for a class without images), 'mean_per_class' (over classes with images), 'confusion' (C x C list,
        [true][pred] counts), 'pred_counts' ({class: images predicted as it}), 'mean_top1_prob', 'rows'.
    """
    import torch
    k = min(int(topk), len(classes))
    y = torch.as_tensor(labels, dtype=torch.long)
    top = probs.topk(k, dim=1).indices  # (N, k)
    pred = top[:, 0]
    n_cls = len(classes)
    confusion = torch.bincount(y * n_cls + pred, minlength=n_cls * n_cls).reshape(n_cls, n_cls)
    per_class = {}
    for i, name in enumerate(classes):
        images, correct = int(confusion[i].sum()), int(confusion[i, i])
        per_class[name] = {'images': images, 'correct': correct, 'accuracy': correct / images if images else None}
    accs = [v['accuracy'] for v in per_class.values() if v['accuracy'] is not None]
    rows = [{'path': p, 'label': classes[t], 'pred': classes[int(q)], 'correct': int(t == int(q)),
             'top5': '|'.join(classes[int(j)] for j in tk), 'p_top1': f'{float(pr):.6f}'}
            for p, t, q, tk, pr in zip(paths, labels, pred, top, probs.max(dim=1).values)]
    return {
        'top1': float((pred == y).float().mean()),
        'topk': float((top == y[:, None]).any(dim=1).float().mean()),
        'k': k,
        'per_class': per_class,
        'mean_per_class': sum(accs) / len(accs),
        'confusion': confusion.tolist(),
        'pred_counts': {name: int(confusion[:, i].sum()) for i, name in enumerate(classes)},
        'mean_top1_prob': float(probs.max(dim=1).values.mean()),
        'rows': rows,
    }


# ------------------------------------------------------------------------------------------------- the files
class Writer:
    """Atomic writes under one output folder, recorded in its manifest; a file this tool did not write (or that was
    changed since) is never replaced."""

    def __init__(self, out, inputs):
        check_outputs_apart([out], inputs, '--out')
        self.out = out
        self.manifest = OutputManifest(out, TOOL)

    def check(self, rel_paths):
        """Raise before anything is written when one of ``rel_paths`` exists and is not this tool's own."""
        foreign = [p for p in (osp.join(self.out, r) for r in rel_paths)
                   if osp.exists(p) and not self.manifest.owns(p)]
        if foreign:
            raise FileExistsError(f'{", ".join(foreign)} exist(s) and were not written by {TOOL} (no record in '
                                  f'{self.manifest.path}); choose another --out or move them away.')

    def text(self, rel, text):
        from mixcl_arch.utils.file_io import atomic_write_text
        path = osp.join(self.out, rel)
        os.makedirs(osp.dirname(path), exist_ok=True)
        atomic_write_text(text, path)
        self.manifest.record(path)
        return path

    def csv(self, rel, rows, header=None):
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator='\n')
        if header:
            writer.writerow(header)
        writer.writerows(rows)
        return self.text(rel, buf.getvalue())

    def png(self, rel, fig):
        from mixcl_arch.utils.file_io import atomic_write_bytes
        path = osp.join(self.out, rel)
        buf = io.BytesIO()
        fig.savefig(buf, format='png', dpi=120)
        atomic_write_bytes(buf.getvalue(), path)
        self.manifest.record(path)
        return path


CLASSIFY_FILES = ('summary.json', 'predictions.csv', 'per_class.csv', 'confusion.csv')


def write_classify(writer, prefix, result, meta):
    """The four files of one model under ``prefix`` (relative folder, '' for the top); returns the summary."""
    classes = list(result['per_class'])
    pred_fields = ['path', 'label', 'pred', 'correct', 'top5', 'p_top1']
    writer.csv(osp.join(prefix, 'predictions.csv'), [[r[k] for k in pred_fields] for r in result['rows']],
               pred_fields)
    writer.csv(osp.join(prefix, 'per_class.csv'),
               [[c, v['images'], v['correct'], '' if v['accuracy'] is None else f"{v['accuracy']:.6f}"]
                for c, v in result['per_class'].items()], ['class', 'images', 'correct', 'accuracy'])
    writer.csv(osp.join(prefix, 'confusion.csv'), [[c] + row for c, row in zip(classes, result['confusion'])],
               ['true\\pred'] + classes)
    summary = dict(meta, images=len(result['rows']), top1=result['top1'])
    summary[f"top{result['k']}"] = result['topk']  # top-5, or top-C with fewer classes
    summary.update(mean_per_class=result['mean_per_class'], mean_top1_prob=result['mean_top1_prob'],
                   per_class_accuracy={c: v['accuracy'] for c, v in result['per_class'].items()},
                   pred_counts=result['pred_counts'], confusion=result['confusion'])
    writer.text(osp.join(prefix, 'summary.json'), json.dumps(summary, indent=2) + '\n')
    return summary


def run_model(args, data, model, pretrained, model_cfgs):
    """Classify ``data`` with one model; returns (evaluate() result, summary metadata)."""
    from mixcl_arch.clip.prior import CLIPPrior
    t0 = time.time()
    prior = CLIPPrior(**prior_options(args, model, pretrained, data.classes, model_cfgs))
    probs = zero_shot_probs(prior, data.paths, args.batch_size, args.num_workers, not args.quiet)
    result = evaluate(probs, data.labels, data.classes, data.paths, args.topk)
    meta = {'model': prior.model_name, 'pretrained': pretrained, 'data': data.source, 'classes': data.classes,
            'templates': list(prior.templates), 'device': str(prior.device), 'seconds': round(time.time() - t0, 2)}
    return result, meta


def classify(args):
    data = LabelledSet.from_args(args)
    model_cfgs = load_model_cfgs(args.model_cfg)
    writer = Writer(args.out, [args.data, args.csv, args.root])
    writer.check(CLASSIFY_FILES)
    check_weights([(args.model, args.pretrained)], args, model_cfgs)
    result, meta = run_model(args, data, args.model, args.pretrained, model_cfgs)
    return write_classify(writer, '', result, meta)


# ------------------------------------------------------------------------------------------------- the sweep
def parse_model_specs(specs, default_pretrained):
    """``MODEL[=PRETRAINED]`` entries -> [(model, pretrained)] (default: the clip.sh models)."""
    out = []
    for spec in specs or CLIP_SH_MODELS:
        model, sep, pretrained = spec.partition('=')
        if not model or (sep and not pretrained):
            raise ValueError(f'--model {spec!r}: expected MODEL or MODEL=PRETRAINED (tag or file).')
        out.append((model.replace('/', '-'), pretrained or default_pretrained))
    names = [m for m, _ in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f'--model lists {dup} more than once; each model gets one folder under --out.')
    return out


def sweep_figure(summaries, classes, true_counts):
    """Left: top-1 accuracy per model; right: share of the images predicted as each class, per model, with the
    true shares first. Returns the matplotlib figure."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    names = [s['model'] for s in summaries]
    fig, (ax_acc, ax_dist) = plt.subplots(1, 2, figsize=(max(8.0, 1.2 * len(names) + 6), 4.5))
    acc = [100 * s['top1'] for s in summaries]
    bars = ax_acc.bar(range(len(names)), acc, color='tab:blue')
    ax_acc.bar_label(bars, fmt='%.1f', fontsize=8)
    ax_acc.set_xticks(range(len(names)), names, rotation=45, ha='right')
    ax_acc.set_ylabel('top-1 accuracy (%)')
    ax_acc.set_ylim(0, 105)
    ax_acc.set_title('zero-shot accuracy')
    cols = ['true'] + names
    counts = [true_counts] + [[s['pred_counts'][c] for c in classes] for s in summaries]
    bottom = [0.0] * len(cols)
    for ci, cls_name in enumerate(classes):
        share = [100 * cnt[ci] / max(1, sum(cnt)) for cnt in counts]
        ax_dist.bar(range(len(cols)), share, bottom=bottom, label=cls_name)
        bottom = [b + s for b, s in zip(bottom, share)]
    ax_dist.set_xticks(range(len(cols)), cols, rotation=45, ha='right')
    ax_dist.set_ylabel('images (%)')
    ax_dist.set_title('predicted class distribution')
    ax_dist.legend(fontsize=8, loc='upper right')
    fig.tight_layout()
    return fig


def sweep(args):
    data = LabelledSet.from_args(args)
    models = parse_model_specs(args.model, args.pretrained)
    model_cfgs = load_model_cfgs(args.model_cfg)
    writer = Writer(args.out, [args.data, args.csv, args.root])
    writer.check(['sweep.csv', 'sweep.json', 'sweep.png'] + [osp.join(m, f) for m, _ in models for f in CLASSIFY_FILES])
    check_weights(models, args, model_cfgs)
    summaries = []
    for model, pretrained in models:
        result, meta = run_model(args, data, model, pretrained, model_cfgs)
        summaries.append(write_classify(writer, model, result, meta))
    classes = data.classes
    true_counts = [data.labels.count(i) for i in range(len(classes))]
    header = (['model', 'pretrained', 'images', 'top1', 'mean_per_class', 'mean_top1_prob', 'seconds']
              + [f'acc_{c}' for c in classes] + [f'pred_{c}' for c in classes])
    rows = [[s['model'], s['pretrained'], s['images'], f"{s['top1']:.6f}", f"{s['mean_per_class']:.6f}",
             f"{s['mean_top1_prob']:.6f}", s['seconds']]
            + ['' if s['per_class_accuracy'][c] is None else f"{s['per_class_accuracy'][c]:.6f}" for c in classes]
            + [s['pred_counts'][c] for c in classes] for s in summaries]
    writer.csv('sweep.csv', rows, header)
    fig = sweep_figure(summaries, classes, true_counts)
    writer.png('sweep.png', fig)
    out = {'data': data.source, 'classes': classes, 'true_counts': dict(zip(classes, true_counts)),
           'templates': list(args.templates),
           'models': [{k: s[k] for k in ('model', 'pretrained', 'top1', 'mean_per_class', 'mean_top1_prob',
                                         'pred_counts', 'seconds')} for s in summaries]}
    writer.text('sweep.json', json.dumps(out, indent=2) + '\n')
    return out


# --------------------------------------------------------------------------------------------------- the CLI
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0], epilog=__doc__.split('\n', 2)[2],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest='command', required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument('--data', help='ImageFolder root: DATA/<class>/<images>')
    common.add_argument('--csv', help='CSV with an image path and a label column per row')
    common.add_argument('--path-col', default='path', help='--csv column with the image path (default path)')
    common.add_argument('--label-col', default='label', help='--csv column with the class (default label)')
    common.add_argument('--root', help='folder the --csv paths are relative to (default: the CSV\'s folder)')
    common.add_argument('--classes', nargs='+', help='class names in order (default: the sorted labels found)')
    common.add_argument('--out', required=True, help='output folder')
    common.add_argument('--model-cfg', action='append', default=[], metavar='NAME=FILE',
                        help='open_clip config JSON of a model that is not built into open_clip (repeatable)')
    common.add_argument('--quick-gelu', choices=('auto', 'true', 'false'), default='auto', help='clip.quick_gelu')
    common.add_argument('--clip-torchscript', action='store_true',
                        help="weights files are TorchScript archives such as OpenAI's ViT-B-32.pt (code: only for "
                        'files you trust)')
    common.add_argument('--no-download', action='store_true', help='never download a tag that is not cached')
    common.add_argument('--device', default='auto', help='auto | cpu | cuda[:N]')
    common.add_argument('--dtype', default='fp32', help='fp32 | fp16 (CUDA) | bf16')
    common.add_argument('--batch-size', type=int, default=64)
    common.add_argument('--num-workers', type=int, default=2, help='image decoding workers')
    common.add_argument('--topk', type=int, default=5, help='k of the top-k accuracy (default 5)')
    common.add_argument('--quiet', action='store_true', help='no progress bar')
    c = sub.add_parser('classify', parents=[common], help='one model on a labelled set')
    c.add_argument('--model', default='ViT-B-32', help='open_clip model name (ViT-B/32 is read as ViT-B-32)')
    c.add_argument('--pretrained', default='openai', help='open_clip tag or local weights file')
    c.add_argument('--templates', nargs='+', default=[PAPER_TEMPLATE],
                   help=f'prompt templates with {{}} (default: {PAPER_TEMPLATE!r}); several are ensembled')
    s = sub.add_parser('sweep', parents=[common], help='several models on one labelled set, with a plot')
    s.add_argument('--model', action='append', metavar='MODEL[=PRETRAINED]',
                   help=f'repeatable; default: the reference clip.sh models {", ".join(CLIP_SH_MODELS)}')
    s.add_argument('--pretrained', default='openai', help='weights of models given without =PRETRAINED')
    s.add_argument('--templates', nargs='+', default=[REFERENCE_TEMPLATE],
                   help=f'prompt templates (default: the reference domain step\'s {REFERENCE_TEMPLATE!r})')
    args = p.parse_args(argv)
    if args.batch_size < 1 or args.num_workers < 0 or args.topk < 1:
        p.error('--batch-size and --topk must be >= 1 and --num-workers >= 0')
    return args


if __name__ == '__main__':
    parse_args()  # --help and usage errors answer here, before the imports below (torch and basicsr take seconds)

import mixcl_arch  # noqa: E402,F401  (before basicsr)
from mixcl_arch.utils.image_io import IMG_EXTENSIONS, decode_image, scan_images  # noqa: E402
from mixcl_arch.utils.output_guard import OutputManifest, check_outputs_apart  # noqa: E402


def main(argv=None):
    args = parse_args(argv)
    from mixcl_arch.clip.weights import CLIPWeightsError
    try:
        out = classify(args) if args.command == 'classify' else sweep(args)
    except (CLIPWeightsError, ValueError, FileNotFoundError, FileExistsError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 1
    print(json.dumps(out, indent=2))
    return 0


if __name__ == '__main__':
    sys.exit(main())
