"""TFDS builders: each layout prepares ArrayRecord files that read back exactly and feed Grain.

Bad records found only when images are fully decoded (truncated JPEG) are named or skipped and
counted in ``summary.json``, as are the loaders' own skips.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

tfds = pytest.importorskip("tensorflow_datasets")

from radflow_jax.data import formats, pipeline  # noqa: E402
from radflow_jax.data.formats import Record, RecordError  # noqa: E402
from radflow_jax.data.tfds import cli, source  # noqa: E402
from radflow_jax.data.tokenizer import train_tokenizer  # noqa: E402
from radflow_jax.schema import get_schema  # noqa: E402


def _sibling(name: str):
    """A fixture-writing test module of tests/data (imported by path: tests are not a package)."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).parents[1] / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


mimic_fx, openi_fx, jsonl_fx = (_sibling(n) for n in
                                ("test_formats_mimic", "test_formats_openi", "test_formats_jsonl"))


def write_iu_r2gen(root: str, n: int = 6) -> None:
    """R2Gen's iu_xray layout: annotation.json, image paths relative to images/, two views."""
    ann = {"train": [], "val": [], "test": []}
    for i in range(n):
        split = ("train", "train", "train", "train", "val", "test")[i % 6]
        cid = f"CXR{i}_IM-{i:04d}"
        paths = [f"{cid}/{k}.png" for k in range(2)]
        for k, rel in enumerate(paths):
            os.makedirs(os.path.join(root, "images", cid), exist_ok=True)
            pixels = np.random.default_rng(i * 10 + k).integers(0, 256, (40, 36), dtype=np.uint8)
            Image.fromarray(pixels, mode="L").save(os.path.join(root, "images", rel))
        ann[split].append({"id": cid, "report": f"the heart is normal size {i}. no effusion.",
                           "image_path": paths, "split": split})
    with open(os.path.join(root, "annotation.json"), "w") as f:
        json.dump(ann, f)


def _prepare(tmp_path, dataset: str, manual: str, **kw) -> dict:
    kw.setdefault("max_image_side", 64)
    return cli.prepare(dataset, manual, str(tmp_path / "tfds"), **kw)


def _loader_example(records, tok, index: int) -> dict:
    load = pipeline.LoadExample(
        records=tuple(records), tokenizer=tok, image_size=32, max_views=2, num_labels=0,
        prompt=pipeline.prompt_tokens(tok, "chest x-ray", 8), max_target_len=32,
    )
    return load.map(index)


def test_iu_xray_r2gen_round_trip_and_grain_batches(tmp_path):
    manual = str(tmp_path / "iu")
    write_iu_r2gen(manual)
    summary = _prepare(tmp_path, "iu_xray", manual)
    assert summary["cases"] == {"train": 4, "val": 1, "test": 1}
    assert summary["images"] == {"train": 8, "val": 2, "test": 2}
    assert summary["sections"]["train"] == {"findings": 4, "impression": 0, "both": 0}
    assert summary["skipped"] == {"total": 0, "by_reason": {}, "first": []}
    assert summary["source_format"] == "r2gen"
    with open(tmp_path / "tfds" / "summary.json") as f:
        assert json.load(f)["iu_xray"]["cases"] == summary["cases"]

    splits = source.load_splits("iu_xray", str(tmp_path / "tfds"))
    raw, _ = formats.load_r2gen(os.path.join(manual, "annotation.json"), section_fallback="findings",
                                image_root=os.path.join(manual, "images"))
    by_id = {r.id: r for r in raw["train"]}
    tfds_train = splits["train"]
    assert len(tfds_train) == 4 and sorted(r.id for r in tfds_train) == sorted(by_id)
    tok = train_tokenizer([r.findings for r in raw["train"]])
    for i, rec in enumerate(tfds_train):
        orig = by_id[rec.id]
        assert (rec.findings, rec.impression, rec.report) == (orig.findings, "", orig.report)
        assert rec.labels is None and rec.critical is None and rec.split == "train"
        assert all(isinstance(b, bytes) for b in rec.image_paths) and len(rec.image_paths) == 2
        # Lossless PNG at full size: the pipeline sees exactly the pixels of the original files.
        got = _loader_example(tfds_train, tok, i)
        want = _loader_example(raw["train"], tok, raw["train"].index(orig))
        np.testing.assert_array_equal(got["image"], want["image"])
        np.testing.assert_array_equal(got["target_tokens"], want["target_tokens"])

    ds = pipeline.make_dataset(
        tfds_train, tok, batch_size=2, image_size=32, max_views=2, max_prompt_len=8,
        max_target_len=32, prompt="chest x-ray", train=False, seed=0, process_index=0,
        process_count=1,
    )
    batches = list(ds)
    assert len(batches) == 2 and batches[0]["image"].shape == (2, 2, 32, 32, 1)
    assert batches[0]["view_mask"].all() and batches[1]["valid"].all()
    assert -1.0 <= batches[0]["image"].min() and batches[0]["image"].max() <= 1.0


def test_images_are_downscaled_grayscale(tmp_path):
    manual = str(tmp_path / "iu")
    write_iu_r2gen(manual)
    _prepare(tmp_path, "iu_xray", manual, max_image_side=20)
    rec = source.load_splits("iu_xray", str(tmp_path / "tfds"))["val"][0]
    with Image.open(io.BytesIO(rec.image_paths[0])) as im:
        assert (im.format, im.mode, im.size) == ("PNG", "L", (18, 20))


def test_iu_xray_openi_layout_with_skips_in_summary(tmp_path):
    manual = str(tmp_path / "openi")
    openi_fx.write_openi(manual, 8)
    os.remove(os.path.join(manual, "NLMCXR_png", "CXR5_IM-0001-4001.png"))
    with pytest.raises(RecordError, match="CXR5"):
        _prepare(tmp_path, "iu_xray", manual)
    summary = _prepare(tmp_path, "iu_xray", manual, on_bad_record="skip", overwrite=True)
    assert sum(summary["cases"].values()) == 7 and summary["source_format"] == "openi_xml"
    assert summary["skipped"]["by_reason"] == {"missing image": 1}
    assert "CXR5" in summary["skipped"]["first"][0]
    assert summary["tags"] == {"Cardiomegaly/mild": 7, "Lung/hypoinflation": 7}
    recs = [r for v in source.load_splits("iu_xray", str(tmp_path / "tfds")).values() for r in v]
    assert sorted(r.id for r in recs) == sorted(f"CXR{i}" for i in (1, 2, 3, 4, 6, 7, 8))
    assert recs[0].tags == ("Cardiomegaly/mild", "Lung/hypoinflation")
    assert recs[0].indication == "Positive TB test"


def _truncate_jpeg(path: str) -> None:
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])  # header intact: only a full decode notices


def test_mimic_cxr_jpg_labels_and_truncated_jpeg(tmp_path):
    manual = str(tmp_path / "mimic")
    mimic_fx.write_mimic(manual)
    bad = os.path.join(manual, "files", "p10", "p10000032", "s53189527", "bb-01.jpg")
    _truncate_jpeg(bad)
    assert formats._check_image(bad, verify=True) is None  # the header check lets it through
    with pytest.raises(RecordError, match="image file is truncated") as info:
        _prepare(tmp_path, "mimic_cxr", manual)
    assert (info.value.record_id, info.value.field) == ("s53189527", "image_path[0]")
    summary = _prepare(tmp_path, "mimic_cxr", manual, on_bad_record="skip", overwrite=True)
    assert summary["cases"] == {"train": 1, "val": 1, "test": 1}
    assert summary["skipped"]["by_reason"] == {"corrupt image": 1}
    assert summary["labels"]["train"]["positive"]["Pneumothorax"] == 1
    assert summary["labels"]["train"]["critical"] == 1
    val_labels = summary["labels"]["val"]  # not in the labels file: blank, so no positives
    assert val_labels["labeled"] == 1 and sum(val_labels["positive"].values()) == 0
    splits = source.load_splits("mimic_cxr", str(tmp_path / "tfds"))
    rec = splits["train"][0]
    schema = get_schema("cxr")
    assert rec.id == "s50414267" and rec.critical is True and len(rec.image_paths) == 2
    assert rec.labels[schema.index("Pneumothorax")] == 1 and rec.labels[schema.index("Edema")] == -1
    assert splits["val"][0].critical is None
    with Image.open(io.BytesIO(rec.image_paths[0])) as im:
        assert im.format == "JPEG" and im.size == (28, 32)


def test_jsonl_studies_carotid_with_labels(tmp_path):
    manual = str(tmp_path / "us")
    jsonl_fx.write_studies(manual, [jsonl_fx.study(i) for i in range(4)])
    summary = _prepare(tmp_path, "jsonl_studies/carotid", manual)
    assert summary["cases"] == {"train": 2, "val": 1, "test": 1}
    assert summary["labels"]["train"]["positive"]["Right Stenosis 50-69%"] == 2
    splits = source.load_splits("jsonl_studies/carotid", str(tmp_path / "tfds"))
    rec = min(splits["train"], key=lambda r: r.id)
    schema = get_schema("carotid")
    assert rec.id == "us-000" and rec.critical is False
    assert len(rec.labels) == len(schema.observations)
    assert rec.labels[schema.index("Right Stenosis 50-69%")] == 1
    for view in rec.image_paths:  # the RGB left view was stored as grayscale
        with Image.open(io.BytesIO(view)) as im:
            assert im.mode == "L"


def test_truncation_is_counted_against_the_token_budget(tmp_path):
    manual = str(tmp_path / "iu")
    write_iu_r2gen(manual)
    short = _prepare(tmp_path, "iu_xray", manual, max_target_len=8)
    assert short["target_tokens"]["train"]["truncated"] == 4
    assert short["target_tokens"]["train"]["p50"] > 8
    full = _prepare(tmp_path, "iu_xray", manual, max_target_len=64, overwrite=True)
    assert full["target_tokens"]["train"]["truncated"] == 0


def test_prepared_dataset_is_not_silently_rebuilt_and_layouts_are_checked(tmp_path):
    manual = str(tmp_path / "iu")
    write_iu_r2gen(manual)
    _prepare(tmp_path, "iu_xray", manual)
    with pytest.raises(FileExistsError, match="--overwrite"):
        _prepare(tmp_path, "iu_xray", manual)
    os.makedirs(tmp_path / "empty" / "x")
    with pytest.raises(ValueError, match="(?s)no dataset layout recognised.*ecgen-radiology"):
        _prepare(tmp_path, "iu_xray", str(tmp_path / "empty"), overwrite=True)
    with pytest.raises(ValueError, match="unknown dataset 'chexpert'"):
        _prepare(tmp_path, "chexpert", manual)
    with pytest.raises(FileNotFoundError, match="no prepared TFDS dataset 'mimic_cxr'"):
        source.load_splits("mimic_cxr", str(tmp_path / "tfds"))


def test_undecodable_bytes_in_the_pipeline_name_the_record(tmp_path):
    rec = Record(id="x1", split="train", image_paths=(b"\x89PNG\r\n\x1a\nbroken",), report="r",
                 findings="lungs clear", impression="", labels=None, critical=None,
                 where="/data/iu_xray/1.0.0:train[0]")
    tok = train_tokenizer(["lungs clear"])
    with pytest.raises(RecordError, match=r"record 'x1' \(train\[0\]\), field image_path\[0\]: "
                                          r"cannot decode image \(14 encoded bytes\)"):
        _loader_example([rec], tok, 0)


def test_readme_iu_xray_commands_prepare_then_train(tmp_path):
    """The README's two IU X-Ray commands, as subprocesses, on a tiny R2Gen fixture."""
    manual, tfds_dir = str(tmp_path / "iu"), str(tmp_path / "tfds")
    write_iu_r2gen(manual, n=12)
    root = str(Path(__file__).parents[3])
    run = lambda *a: subprocess.run([sys.executable, "-m", *a], cwd=root, capture_output=True,
                                    text=True, timeout=600)
    prep = run("radflow_jax.data.prepare", "--dataset=iu_xray", f"--manual_dir={manual}",
               f"--data_dir={tfds_dir}")
    assert prep.returncode == 0, prep.stderr[-2000:]
    train = run("radflow_jax.train", "--config=configs/iu_xray.py:quick", f"--config.data.dir={tfds_dir}",
                f"--workdir={tmp_path / 'run'}", "--config.stages=('data','sft')")
    assert train.returncode == 0, train.stderr[-2000:]
    assert "[sft] 4 steps done" in train.stdout
    summary = json.loads((tmp_path / "run" / "data_summary.json").read_text())
    assert summary["cases"]["train"] == 8
