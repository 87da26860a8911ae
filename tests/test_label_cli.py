"""``python -m radflow_jax.label`` as a user runs it: JSONL and CSV in, labels out, clear errors."""

import json
import os
import subprocess
import sys

import pytest

from radflow_jax.rewards.labeler import CONVENTIONS
from radflow_jax.schema import get_schema

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "radflow_jax.label", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)


def _write(path, lines) -> str:
    path.write_bytes(b"".join(line if isinstance(line, bytes) else line.encode() for line in lines))
    return str(path)


def test_jsonl_to_stdout_every_observation_present(tmp_path):
    path = _write(tmp_path / "r.jsonl", [
        json.dumps({"id": "a", "text": "No effusion; small pneumothorax."}) + "\n",
        "\n",  # blank lines are not records
        json.dumps({"id": 7, "text": "No acute cardiopulmonary abnormality."}) + "\n",
    ])
    result = _run("--modality=cxr", f"--input={path}")
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["id"] for r in rows] == ["a", 7]
    observations = get_schema("cxr").observations
    assert all(list(r["labels"]) == list(observations) for r in rows)
    assert rows[0]["labels"]["Pleural Effusion"] == 0 and rows[0]["labels"]["Pneumothorax"] == 1
    assert rows[0]["labels"]["No Finding"] is None and rows[0]["labels"]["Cardiomegaly"] is None
    assert rows[1]["labels"]["No Finding"] == 1 and "findings" not in rows[1]
    assert all(r["conventions"] == CONVENTIONS for r in rows)  # what produced the labels
    assert "labeled 2 report(s)" in result.stderr


def test_csv_with_sections_to_output_file(tmp_path):
    path = _write(tmp_path / "r.csv", [
        "id,text\n",
        's1,"FINDINGS: Heart size is normal. Small left effusion.\nIMPRESSION: Possible pneumonia, left base."\n',
        "s2,Normal chest radiograph.\n",
    ])
    out = tmp_path / "labels.jsonl"
    result = _run("--modality=cxr", f"--input={path}", f"--output={out}", "--sections")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    first, second = (json.loads(line) for line in out.read_text().splitlines())
    assert first["id"] == "s1" and first["findings"]["Cardiomegaly"] == 0
    assert first["findings"]["Pneumonia"] is None and first["impression"]["Pneumonia"] == -1
    assert first["labels"]["Pleural Effusion"] == 1 and first["labels"]["Pneumonia"] == -1
    assert second["findings"]["No Finding"] == 1 and second["impression"]["No Finding"] is None


def test_carotid_modality(tmp_path):
    path = _write(tmp_path / "r.jsonl", [json.dumps({"id": 1, "text": "Left ICA: 70 % or greater stenosis."}) + "\n"])
    result = _run("--modality=carotid", f"--input={path}")
    assert result.returncode == 0, result.stderr
    labels = json.loads(result.stdout)["labels"]
    assert list(labels) == list(get_schema("carotid").observations)
    assert labels["Left Stenosis >=70%"] == 1 and labels["Right Stenosis >=70%"] is None


@pytest.mark.parametrize("lines,message", [
    (['{"id": 1, "text": "ok"}\n', "not json\n"], "r.jsonl:2: not valid JSON"),
    (['{"id": 1}\n'], "r.jsonl:1: missing 'text'"),
    (['{"text": "no id"}\n'], "r.jsonl:1: missing 'id'"),
    (['{"id": 1, "text": 5}\n'], "r.jsonl:1: text must be a string, got int"),
    (['{"id": [1], "text": "x"}\n'], "r.jsonl:1: id must be"),
    (['["id", "text"]\n'], "r.jsonl:1: expected an object"),
    (['{"id": "a", "text": "x"}\n', '{"id": "a", "text": "y"}\n'], "r.jsonl:2: duplicate id 'a' (first at"),
    (['{"id": 1, "text": "ok"}\n', b'{"id": 2, "text": "caf\xe9"}\n'], "r.jsonl:2: not UTF-8"),
])
def test_malformed_jsonl_lines_are_reported_with_line_numbers(tmp_path, lines, message):
    path = _write(tmp_path / "r.jsonl", lines)
    out = tmp_path / "out.jsonl"
    result = _run("--modality=cxr", f"--input={path}", f"--output={out}")
    assert result.returncode == 1
    assert message in result.stderr, result.stderr
    assert not out.exists() and result.stdout == ""  # nothing written, nothing dropped silently


def test_all_problems_listed_at_once(tmp_path):
    path = _write(tmp_path / "r.jsonl", ["{bad\n", '{"id": 1}\n', '{"id": 2, "text": "fine"}\n', "[]\n"])
    result = _run("--modality=cxr", f"--input={path}")
    assert result.returncode == 1
    assert "3 malformed record(s)" in result.stderr
    assert all(f"r.jsonl:{n}:" in result.stderr for n in (1, 2, 4))


@pytest.mark.parametrize("lines,message", [
    (["name,text\n", "1,x\n"], "r.csv:1: header must name 'id' and 'text'"),
    (["id,text\n", "1,x\n", "2\n"], "r.csv:3: row has fewer columns"),
    (["id,text\n", "1,x,extra\n"], "r.csv:2: row has more columns"),
    (["id,text\n", "1,x\n", "1,y\n"], "r.csv:3: duplicate id '1'"),
])
def test_malformed_csv(tmp_path, lines, message):
    result = _run("--modality=cxr", f"--input={_write(tmp_path / 'r.csv', lines)}")
    assert result.returncode == 1 and message in result.stderr, result.stderr


def test_sections_mode_rejects_empty_report_with_line(tmp_path):
    path = _write(tmp_path / "r.jsonl", ['{"id": "e", "text": "   "}\n'])
    result = _run("--modality=cxr", f"--input={path}", "--sections")
    assert result.returncode == 1 and "r.jsonl:1: id 'e': cannot split into sections" in result.stderr


def test_usage_errors(tmp_path):
    assert _run("--modality=cxr").returncode != 0
    missing = _run("--modality=cxr", f"--input={tmp_path / 'nope.jsonl'}")
    assert missing.returncode == 1 and "no such file" in missing.stderr
    bad_modality = _run("--modality=mri", f"--input={tmp_path / 'nope.jsonl'}")
    assert bad_modality.returncode != 0 and "modality" in bad_modality.stderr
