"""radflow_jax.evaluate on files: any system's R2Gen-format output scored with the project's metrics."""

import contextlib
import io
import json
import os
import subprocess
import sys

import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge

from radflow_jax.data.synthetic import generate_case
from radflow_jax.rewards import labeler
from radflow_jax.schema import get_schema
from radflow_jax.scoring import score_files

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEYS = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "CIDEr", "ce14_micro_precision",
        "ce14_micro_recall", "ce14_micro_f1", "ce14_macro_f1", "ce5_micro_f1", "ce5_macro_f1",
        "ce_example_f1", "consistency_rate", "critical_sensitivity", "critical_specificity",
        "mean_length")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_files")
    cases = {f"c{i}": generate_case("cxr", 3, i, 32) for i in range(40)}
    refs = {k: [c.report] for k, c in cases.items()}
    labels = [{"id": k, "labels": c.labels} for k, c in cases.items()]
    (root / "refs.json").write_text(json.dumps(refs))
    (root / "labels.jsonl").write_text("\n".join(json.dumps(x) for x in labels))
    (root / "perfect.json").write_text(json.dumps(refs))
    normal = "FINDINGS: The lungs are clear. No pleural effusion or pneumothorax. IMPRESSION: No acute cardiopulmonary process."
    (root / "normal.json").write_text(json.dumps({k: [normal] for k in cases}))
    # Already cleaned, as published result files are (R2Gen-style, hyphens kept, one odd space).
    (root / "clean_pred.json").write_text(json.dumps({
        "p1": ["the heart is normal . b-lines are not seen ."], "p2": [" lungs  clear ."],
        "p3": ["mild cardiomegaly . no effusion ."]}))
    (root / "clean_ref.json").write_text(json.dumps({
        "p1": ["the heart is normal in size . no b-lines ."], "p2": ["the lungs are clear ."],
        "p3": ["the cardiac silhouette is enlarged . no pleural effusion ."]}))
    return root


def test_perfect_predictions_score_perfectly(files):
    schema = get_schema("cxr")
    result = score_files(str(files / "perfect.json"), str(files / "refs.json"), schema,
                         labels_path=str(files / "labels.jsonl"), meteor=False)
    for key in KEYS:
        assert key in result, key
    assert result["Bleu_4"] == pytest.approx(1.0, abs=1e-6)
    assert result["ce14_micro_f1"] == 1.0 and result["consistency_rate"] == 1.0
    assert result["gt_ce14_micro_f1"] > 0.95  # the labeler reads the synthetic reports near-perfectly


def test_always_normal_predictions_miss_findings(files):
    result = score_files(str(files / "normal.json"), str(files / "refs.json"), get_schema("cxr"),
                         labels_path=str(files / "labels.jsonl"), meteor=False)
    assert result["ce14_micro_recall"] < 0.5 and result["critical_sensitivity"] in (0.0, None)
    assert result["Bleu_4"] < 0.5


def test_score_files_normalizers(files):
    schema = get_schema("cxr")
    args = (str(files / "normal.json"), str(files / "refs.json"), schema)
    ours = score_files(*args, meteor=False)
    r2gen = score_files(*args, meteor=False, normalize="r2gen_iu")
    assert ours["normalize"] == "radflow" and r2gen["normalize"] == "r2gen_iu"
    assert ours["labeler"] == r2gen["labeler"] == labeler.CONVENTIONS
    assert ours["Bleu_1"] != pytest.approx(r2gen["Bleu_1"], abs=1e-6)  # synthetic text has "50-69%" etc.
    assert ours["ce14_micro_f1"] == r2gen["ce14_micro_f1"]  # labels read the raw text either way


def test_cli_normalize_none_equals_pycocoevalcap(files, tmp_path):
    out = tmp_path / "metrics.json"
    cmd = [sys.executable, "-m", "radflow_jax.evaluate", f"--predictions={files / 'clean_pred.json'}",
           f"--references={files / 'clean_ref.json'}", f"--output={out}", "--no_meteor", "--normalize=none"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["normalize"] == "none"
    res = json.loads((files / "clean_pred.json").read_text())
    gts = json.loads((files / "clean_ref.json").read_text())
    with contextlib.redirect_stdout(io.StringIO()):
        bleu, _ = Bleu(4).compute_score(gts, res)
    expected = {f"Bleu_{i + 1}": b for i, b in enumerate(bleu)}
    expected["ROUGE_L"] = Rouge().compute_score(gts, res)[0]
    expected["CIDEr"] = Cider().compute_score(gts, res)[0]
    assert {k: result[k] for k in expected} == pytest.approx(expected, abs=1e-12, rel=0)


def test_cli_writes_metrics_and_rejects_bad_files(files, tmp_path):
    out = tmp_path / "metrics.json"
    cmd = [sys.executable, "-m", "radflow_jax.evaluate", f"--predictions={files / 'normal.json'}",
           f"--references={files / 'refs.json'}", f"--output={out}", "--no_meteor"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert set(KEYS) <= set(result) and result["normalize"] == "r2gen_iu"  # files: R2Gen's cleaning
    bad = tmp_path / "bad.json"
    bad.write_text('{"c0": [3]}')
    cmd[3] = f"--predictions={bad}"
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "record 'c0'" in done.stderr and "Traceback" not in done.stderr
