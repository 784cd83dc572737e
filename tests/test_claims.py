"""The numbers in README.md and docs/ are tied to commands (``docs/claims.md``), and the benchmarks' own checks run.

- ``scripts/benchmark_dcp.py --check``: the torch DCP and the script's NumPy/OpenCV reference give the same J and A.
- ``scripts/benchmark_fusion_memory.py --check``: MixCLDehazeNet with the lean fusion and with the explicit (H*W)x512
  attention gives the same whole output, and the analytic size of that matrix is what the docs quote.
- Every row of ``docs/claims.md`` points at a phrase that is still in its doc (a claim changed or deleted in the docs
  fails here until claims.md follows), and at tests and scripts that exist.

``scripts/benchmark_speed.py --quick`` is run by ``tests/test_speed_paths.py``. No timing is asserted anywhere.
"""
import os.path as osp
import re

import pytest
import torch

from _train_helpers import load_script

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CLAIMS = osp.join(ROOT, 'docs', 'claims.md')




def squash(text):
    """Whitespace runs -> one space, so that a phrase matches across the docs' line wrapping."""
    return ' '.join(text.split())


def claim_rows():
    """(id, cells) of every claims.md table row whose first cell is a claim id like C12."""
    rows = []
    with open(CLAIMS, encoding='utf-8') as f:
        for line in f:
            cells = [c.strip() for c in re.split(r'(?<!\\)\|', line.strip().strip('|'))]  # '\|' is a literal pipe
            if line.startswith('|') and re.fullmatch(r'C\d+', cells[0]):
                rows.append((cells[0], cells))
    return rows


def test_benchmark_dcp_check_torch_equals_the_numpy_opencv_reference(capsys):
    result = load_script('benchmark_dcp').main(['--check', '--sizes', '96x80,131x67'])
    assert '"max_abs_diff_J"' in capsys.readouterr().out  # the JSON is printed
    assert [r['size'] for r in result['results']] == ['96x80', '131x67']
    for row in result['results']:
        # same A (same pixel picked), and J within float32 rounding of the box sums (values in [0, 1])
        assert row['max_abs_diff_A'] == 0, row
        assert row['max_abs_diff_J'] <= 1e-4, row
        assert 'torch_cpu_1thread_ms' not in row  # --check times nothing


def test_benchmark_dcp_check_sees_a_different_dcp(monkeypatch):
    """The comparison is not vacuous: a torch DCP with another omega is reported as different."""
    module = load_script('benchmark_dcp')
    img = module.make_hazy(80, 96)
    assert module.compare_outputs(img, module.DCPParams())['max_abs_diff_J'] <= 1e-4
    assert module.compare_outputs(img, module.DCPParams(omega=0.8))['max_abs_diff_J'] > 1e-2


def test_benchmark_fusion_memory_check_lean_equals_explicit_attention(capsys):
    module = load_script('benchmark_fusion_memory')
    result = module.main(['--check', '--sizes', '20', '28', '--variant', 'T', '--batch', '2'])
    assert '"max_abs_diff_lean_vs_explicit"' in capsys.readouterr().out
    assert [r['size'] for r in result['results']] == [20, 28]
    eps = torch.finfo(torch.float32).eps
    for row in result['results']:
        # whole outputs, several float32 ulps of the output scale (the two sum in different orders)
        assert row['max_abs_diff_lean_vs_explicit'] <= 64 * eps * max(1.0, row['output_abs_max']), row
        assert row['attention_matrix_mib'] == round(2 * row['size']**2 * 512 * 4 / 2**20, 1)


def test_benchmark_fusion_memory_check_sees_a_different_fusion(monkeypatch):
    """The comparison is not vacuous: an explicit fusion at another softmax temperature is reported as different."""
    module = load_script('benchmark_fusion_memory')
    original = module.explicit_fusion_forward
    monkeypatch.setattr(module, 'explicit_fusion_forward', lambda self, x, text: original(self, x, 4 * text))
    row = module.check(20, 'T', 'cpu', 1)
    assert row['max_abs_diff_lean_vs_explicit'] > 1e3 * torch.finfo(torch.float32).eps * row['output_abs_max'], row


def test_explicit_attention_matrix_size_quoted_in_the_docs():
    """README/speed.md quote 2 GiB per float32 copy of the (H*W) x 512 matrix at 1024^2: the script computes it."""
    assert load_script('benchmark_fusion_memory').attention_matrix_mib(1024, 1) == 2048.0


def test_claims_table_is_well_formed_and_ids_are_unique():
    rows = claim_rows()
    ids = [i for i, _ in rows]
    assert len(ids) >= 40 and len(ids) == len(set(ids))
    for claim_id, cells in rows:
        assert len(cells) == 7, (claim_id, cells)
        assert all(cells), f'{claim_id}: every column is filled in'


@pytest.mark.parametrize('claim_id,cells', claim_rows(), ids=[i for i, _ in claim_rows()])
def test_each_claim_is_still_in_its_doc_and_its_command_exists(claim_id, cells):
    where, phrase_cell, command = cells[2], cells[3], cells[4]
    doc = re.match(r'(README\.md|docs/[\w-]+\.md)', where)
    assert doc, f'{claim_id}: where must start with README.md or docs/<file>.md, got {where!r}'
    with open(osp.join(ROOT, doc.group(1)), encoding='utf-8') as f:
        text = squash(f.read())
    phrases = re.findall(r'`([^`]+)`', phrase_cell)
    assert phrases, f'{claim_id}: no `phrase` given'
    for phrase in phrases:
        assert squash(phrase) in text, f'{claim_id}: {phrase!r} is no longer in {doc.group(1)}; update docs/claims.md'
    for path, name in re.findall(r'(tests/test_\w+\.py)::(\w+)', command):
        with open(osp.join(ROOT, path), encoding='utf-8') as f:
            assert re.search(rf'^def {name}\(', f.read(), re.M), f'{claim_id}: {path}::{name} does not exist'
    for path in re.findall(r'(scripts/[\w.]+\.(?:py|sh))', command):
        assert osp.isfile(osp.join(ROOT, path)), f'{claim_id}: {path} does not exist'
