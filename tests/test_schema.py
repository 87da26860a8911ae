"""Observation schemas: names, order, critical sets."""

import pytest

from radflow_jax import schema


def test_cxr_is_the_chexpert_set():
    s = schema.get_schema("cxr")
    assert len(s.observations) == 14 and len(set(s.observations)) == 14
    assert s.observations[0] == "No Finding" and "Support Devices" in s.observations
    assert s.critical == ("Pneumothorax",)


def test_carotid_schema_per_side():
    s = schema.get_schema("carotid")
    for side in schema.CAROTID_SIDES:
        for grade in schema.STENOSIS_GRADES[1:]:
            assert schema.carotid_stenosis_observation(side, grade) in s.observations
    assert schema.carotid_stenosis_observation("Left", "normal") is None
    assert set(s.critical) == {
        f"{side} {o}" for side in ("Right", "Left") for o in ("Stenosis >=70%", "Near Occlusion", "Occlusion")
    }


def test_extra_critical_and_errors():
    s = schema.get_schema("cxr", extra_critical=("Pleural Effusion", "Pneumothorax"))
    assert s.critical == ("Pneumothorax", "Pleural Effusion")
    with pytest.raises(ValueError, match="Pneumonitis"):
        schema.get_schema("cxr", extra_critical=("Pneumonitis",))
    with pytest.raises(ValueError, match="supported"):
        schema.get_schema("mri")
    with pytest.raises(KeyError, match="known"):
        s.index("Heart")
    with pytest.raises(ValueError):
        schema.carotid_stenosis_observation("Right", "80%")


def test_is_critical_needs_a_positive():
    s = schema.get_schema("cxr")
    assert s.is_critical({"Pneumothorax": 1})
    assert not s.is_critical({"Pneumothorax": -1, "Pleural Effusion": 1})
