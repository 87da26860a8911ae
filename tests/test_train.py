"""The main entry point, run as users run it (a subprocess), on the quick configs."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _train(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "radflow_jax.train", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )


@pytest.mark.parametrize("modality", ["cxr", "carotid"])
def test_data_stage_end_to_end(tmp_path, modality):
    result = _train(f"--config=configs/{modality}.py:quick", f"--workdir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Stopped after data preparation" in result.stdout
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["modality"] == modality
    summary = json.loads((tmp_path / "data_summary.json").read_text())
    assert summary["cases"] == {"train": 64, "val": 16, "test": 16}
    assert summary["skipped"] == 0
    assert (tmp_path / "tokenizer" / "tokenizer.json").exists()
    views = 2 if modality == "carotid" else 1
    assert f"'image': (8, {views}, 128, 128, 1)" in result.stdout


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
