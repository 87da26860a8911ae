"""The main entry point, run as users run it (a subprocess), on the quick configs."""

import json
import os
import subprocess
import sys

import pytest

from radflow_jax.run_log import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _train(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "radflow_jax.train", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )


@pytest.mark.parametrize("modality", ["cxr", "carotid"])
def test_all_stages_end_to_end(tmp_path, modality):
    result = _train(f"--config=configs/{modality}.py:quick", f"--workdir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["modality"] == modality
    summary = json.loads((tmp_path / "data_summary.json").read_text())
    assert summary["cases"] == {"train": 64, "val": 16, "test": 16} and summary["skipped"] == 0
    assert (tmp_path / "tokenizer" / "tokenizer.json").exists()
    sft, rl = read_metrics(str(tmp_path), "sft"), read_metrics(str(tmp_path), "rl")
    assert [r["step"] for r in sft] == [4, 8, 12] and [r["step"] for r in rl] == [2, 4]
    assert {"loss", "learning_rate", "examples_per_s", "token_accuracy"} <= set(sft[-1])
    assert {"reward", "reward/consistency", "kl", "entropy", "response_length",
            "capo/critical_cases"} <= set(rl[-1])
    assert os.listdir(tmp_path / "tensorboard" / "sft") and os.listdir(tmp_path / "tensorboard" / "rl")
    for stage, step in (("sft", 12), ("rl", 4)):
        report = json.loads((tmp_path / "eval" / f"{stage}.json").read_text())
        assert report["step"] == step and len(report["cases"]) == 16
        for key in ("Bleu_4", "ROUGE_L", "CIDEr", "ce14_micro_f1", "ce_example_f1",
                    "consistency_rate", "critical_sensitivity", "mean_length", "gt_ce14_micro_f1"):
            assert key in report["metrics"], key
        assert report["cases"][0]["prediction"].startswith("FINDINGS:")
    assert "gt_ce14_micro_f1" in result.stdout  # the SFT vs RL table


def test_rerun_resumes_instead_of_restarting(tmp_path):
    args = ("--config=configs/cxr.py:quick", f"--workdir={tmp_path}", "--config.stages=('data','sft','rl')",
            "--config.sft.num_steps=8", "--config.rl.num_steps=2")
    assert _train(*args).returncode == 0
    rows = read_metrics(str(tmp_path))
    again = _train(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert read_metrics(str(tmp_path)) == rows  # nothing retrained
    assert "[sft] resumed from step 8" in again.stdout and "[rl] resumed from step 2" in again.stdout
    longer = _train(*args[:-1], "--config.rl.num_steps=4")
    assert longer.returncode == 0, longer.stderr[-3000:]
    assert "[rl] resumed from step 2" in longer.stdout
    assert [r["step"] for r in read_metrics(str(tmp_path), "rl")] == [2, 4]


def test_unknown_override_is_one_clear_line(tmp_path):
    result = _train("--config=configs/cxr.py:quick", "--config.data.nope=1", f"--workdir={tmp_path}")
    assert result.returncode != 0
    assert "config error: unknown field config.data.nope" in result.stderr
    assert "Traceback" not in result.stderr


def test_invalid_value_is_one_clear_line(tmp_path):
    result = _train("--config=configs/cxr.py:quick", "--config.data.on_bad_record=ignore", f"--workdir={tmp_path}")
    assert result.returncode != 0
    assert "config.data.on_bad_record" in result.stderr
    assert "Traceback" not in result.stderr
