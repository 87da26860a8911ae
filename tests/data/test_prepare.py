"""The data stage: synthetic data made once, reused, regenerated when settings change; bad data loud."""

import json
import os

import numpy as np
import pytest

from radflow_jax import config as config_lib
from radflow_jax.data import formats, prepare


def _config(**data):
    config = config_lib.load_config_file("configs/cxr.py:quick")
    config.data.num_train, config.data.num_val, config.data.num_test = 12, 4, 4
    config.data.max_target_len = 320
    config.data.update(data)
    return config_lib.validate(config)


def test_prepare_generates_then_reuses(tmp_path):
    config = _config()
    first = prepare.prepare_data(config, str(tmp_path))
    assert {s: len(v) for s, v in first.splits.items()} == {"train": 12, "val": 4, "test": 4}
    assert all(r.labels is not None and len(r.labels) == 14 for r in first.splits["train"])
    stamp = os.path.getmtime(tmp_path / "data" / "annotation.json")
    tok_stamp = os.path.getmtime(tmp_path / "tokenizer" / "tokenizer.json")
    second = prepare.prepare_data(config, str(tmp_path))
    assert os.path.getmtime(tmp_path / "data" / "annotation.json") == stamp
    assert os.path.getmtime(tmp_path / "tokenizer" / "tokenizer.json") == tok_stamp
    assert second.tokenizer.encode("no pneumothorax.") == first.tokenizer.encode("no pneumothorax.")
    summary = json.loads((tmp_path / "data_summary.json").read_text())
    assert summary["cases"]["train"] == 12 and summary["target_tokens"]["truncated"] == 0


def test_prepare_regenerates_when_settings_change(tmp_path):
    prepare.prepare_data(_config(), str(tmp_path))
    bigger = prepare.prepare_data(_config(num_train=16), str(tmp_path))
    assert len(bigger.splits["train"]) == 16
    assert not os.path.exists(str(tmp_path / "data") + ".partial")


def test_augment_override_gives_the_evaluation_images(tmp_path):
    """``augment=False`` (the RL stage's ``rl.augment``) keeps the training order and shuffling but
    yields the images exactly as evaluation decodes them; the default jitters them."""
    config = _config()
    data = prepare.prepare_data(config, str(tmp_path))
    clean = next(iter(prepare.make_split_dataset(data, config, "train", train=False, batch_size=12)))
    by_index = {int(i): image for i, image in zip(clean["index"], clean["image"])}
    for augment, same in ((False, True), (None, False)):
        batch = next(iter(prepare.make_split_dataset(data, config, "train", train=True, batch_size=4,
                                                     augment=augment)))
        equal = [np.array_equal(image, by_index[int(i)]) for i, image in zip(batch["index"], batch["image"])]
        assert all(equal) if same else not any(equal), augment


def test_truncation_is_counted(tmp_path):
    data = prepare.prepare_data(_config(max_target_len=8), str(tmp_path))
    assert data.summary["target_tokens"]["truncated"] == 12


def test_bad_record_in_real_dataset_is_named_or_skipped(tmp_path):
    good = prepare.prepare_data(_config(), str(tmp_path / "run"))
    annotation = json.loads(open(os.path.join(good.data_dir, "annotation.json")).read())
    bad_id = annotation["train"][3]["id"]
    annotation["train"][3]["image_path"] = ["../../etc/passwd"]
    with open(os.path.join(good.data_dir, "annotation.json"), "w") as f:
        json.dump(annotation, f)
    real = dict(source="r2gen", dir=good.data_dir)
    with pytest.raises(formats.RecordError, match=rf"{bad_id}.*image_path\[0\]"):
        prepare.prepare_data(_config(**real), str(tmp_path / "real"))
    skipped = prepare.prepare_data(_config(**real, on_bad_record="skip"), str(tmp_path / "real2"))
    assert len(skipped.splits["train"]) == 11 and len(skipped.skips) == 1
    assert skipped.summary["skipped"] == 1
