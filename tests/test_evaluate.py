"""radflow_jax.evaluate on files: any system's R2Gen-format output scored with the project's metrics."""

import json
import os
import subprocess
import sys

import pytest

from radflow_jax.data.synthetic import generate_case
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


def test_cli_writes_metrics_and_rejects_bad_files(files, tmp_path):
    out = tmp_path / "metrics.json"
    cmd = [sys.executable, "-m", "radflow_jax.evaluate", f"--predictions={files / 'normal.json'}",
           f"--references={files / 'refs.json'}", f"--output={out}", "--no_meteor"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert set(KEYS) <= set(json.loads(out.read_text()))
    bad = tmp_path / "bad.json"
    bad.write_text('{"c0": [3]}')
    cmd[3] = f"--predictions={bad}"
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "record 'c0'" in done.stderr and "Traceback" not in done.stderr
