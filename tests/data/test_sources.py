"""``sources.load_records``: each ``config.data.source`` reaches its loader with the config's paths."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from radflow_jax import config as config_lib
from radflow_jax.data import sources
from radflow_jax.schema import get_schema

HERE = Path(__file__).parent
NEW_FIELDS = {  # fields data/sources.py reads beyond today's base_config (the lead adds them)
    "tfds_name": "", "reports_dir": "", "view_order": ("PA", "AP", "LATERAL", "LL"),
    "split_seed": 0, "split_fractions": (0.7, 0.1, 0.2),
}  # fmt: skip


def _module(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _config(source: str, modality: str = "cxr", **data):
    c = config_lib.base_config()
    c.modality = modality
    for key, value in NEW_FIELDS.items():
        if key not in c.data:
            c.data[key] = value
    c.data.source = source
    c.data.update(data)
    return c


def _ids(splits) -> list[str]:
    return sorted(r.id for v in splits.values() for r in v)


def test_mimic_cxr_jpg(tmp_path):
    _module(HERE / "test_formats_mimic.py").write_mimic(str(tmp_path))
    c = _config("mimic_cxr_jpg", labels="mimic-cxr-2.0.0-chexpert.csv")
    splits, skips = sources.load_records(c, str(tmp_path), get_schema("cxr"))
    assert _ids(splits) == ["s50414267", "s50771383", "s53189527", "s57375967"] and not skips
    assert splits["train"][0].labels is not None
    c = _config("mimic_cxr_jpg", labels="", view_order=("LATERAL", "PA"))
    splits, _ = sources.load_records(c, str(tmp_path), get_schema("cxr"))
    first = splits["train"][0]
    assert first.labels is None and os.path.basename(first.image_paths[0]) == "aa-01.jpg"


def test_openi_xml_and_split_seed(tmp_path):
    _module(HERE / "test_formats_openi.py").write_openi(str(tmp_path), 10)
    c = _config("openi_xml", annotation="ecgen-radiology", image_root="NLMCXR_png")
    splits, _ = sources.load_records(c, str(tmp_path), get_schema("cxr"))
    assert len(_ids(splits)) == 10
    c.data.split_seed = 3
    other, _ = sources.load_records(c, str(tmp_path), get_schema("cxr"))
    assert {s: len(v) for s, v in other.items()} != {s: len(v) for s, v in splits.items()}


def test_jsonl(tmp_path):
    fx = _module(HERE / "test_formats_jsonl.py")
    fx.write_studies(str(tmp_path), [fx.study(i) for i in range(3)])
    c = _config("jsonl", "carotid", annotation="studies.jsonl", image_root="", on_bad_record="skip")
    splits, skips = sources.load_records(c, str(tmp_path), get_schema("carotid"))
    assert _ids(splits) == ["us-000", "us-001", "us-002"] and len(skips) == 0


def test_unknown_source(tmp_path):
    with pytest.raises(ValueError, match="known: .*'tfds'"):
        sources.load_records(_config("csv"), str(tmp_path), get_schema("cxr"))


@pytest.mark.parametrize("name, arg, tfds_name", [
    ("iu_xray", None, "iu_xray"), ("iu_xray", "quick", "iu_xray"), ("mimic_cxr", None, "mimic_cxr"),
    ("jsonl_studies", "carotid", "jsonl_studies/carotid"),
    ("jsonl_studies", "cxr,quick", "jsonl_studies/cxr"),
])  # fmt: skip
def test_real_data_configs(name, arg, tfds_name):
    module = _module(HERE.parents[1] / "configs" / f"{name}.py")
    c = module.get_config(arg) if arg else module.get_config()
    assert (c.data.source, c.data.tfds_name) == ("tfds", tfds_name)
    assert c.modality == ("carotid" if arg and arg.startswith("carotid") else "cxr")
    if "tfds" not in config_lib.DATA_SOURCES:
        pytest.skip("config.DATA_SOURCES has no 'tfds' yet (the lead adds it)")
    c.data.dir = "/data/tfds"
    config_lib.validate(c)


def test_tfds_source_reads_a_prepared_dataset(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    from radflow_jax.data.tfds import cli

    builders_test = _module(HERE / "tfds" / "test_builders.py")
    builders_test.write_iu_r2gen(str(tmp_path / "iu"))
    cli.prepare("iu_xray", str(tmp_path / "iu"), str(tmp_path / "tfds"), max_image_side=32)
    c = _module(HERE.parents[1] / "configs" / "iu_xray.py").get_config("quick")
    splits, skips = sources.load_records(c, str(tmp_path / "tfds"), get_schema("cxr"))
    assert {s: len(v) for s, v in splits.items()} == {"train": 4, "val": 1, "test": 1}
    assert isinstance(splits["train"][0].image_paths[0], bytes) and len(skips) == 0
