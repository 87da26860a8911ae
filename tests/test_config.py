"""Config loading, validation and the override check of the entry points."""

import pytest

from radflow_jax import config as config_lib


@pytest.mark.parametrize("spec", ["configs/cxr.py", "configs/cxr.py:quick", "configs/carotid.py", "configs/carotid.py:quick"])
def test_shipped_configs_validate(spec):
    config = config_lib.validate(config_lib.load_config_file(spec))
    assert config.modality in ("cxr", "carotid")
    with pytest.raises(AttributeError):
        config.data.not_a_field = 1  # locked after validation


def test_carotid_has_two_views():
    assert config_lib.load_config_file("configs/carotid.py").data.max_views == 2


def test_unknown_config_argument():
    with pytest.raises(ValueError, match="unknown argument 'big'"):
        config_lib.load_config_file("configs/cxr.py:big")


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("modality", "mri", "config.modality"),
        ("stages", ("sft_typo",), "config.stages"),
        ("extra_critical", ("Pneumonitis",), "Pneumonitis"),
        ("data.render_size", 16, "config.data.render_size"),
        ("data.section_fallback", "guess", "config.data.section_fallback"),
        ("data.on_bad_record", "ignore", "config.data.on_bad_record"),
        ("tokenizer.kind", "char", "config.tokenizer.kind"),
    ],
)
def test_invalid_values_name_the_field(field, value, match):
    config = config_lib.load_config_file("configs/cxr.py")
    node = config
    *parents, leaf = field.split(".")
    for p in parents:
        node = node[p]
    node[leaf] = value
    with pytest.raises(ValueError, match=match):
        config_lib.validate(config)


def test_real_dataset_needs_a_dir():
    config = config_lib.load_config_file("configs/cxr.py")
    config.data.source = "r2gen"
    with pytest.raises(config_lib.ConfigError, match="config.data.dir"):
        config_lib.validate(config)


def test_override_check_names_known_fields():
    with pytest.raises(config_lib.ConfigError, match=r"config\.data\.nope.*max_views"):
        config_lib.check_overrides(["--config=configs/cxr.py", "--config.data.nope=3"], "configs/cxr.py")
    with pytest.raises(config_lib.ConfigError, match=r"config\.tokenizer\.kind\.x"):
        config_lib.check_overrides(["--config.tokenizer.kind.x=3"], "configs/cxr.py")
    config_lib.check_overrides(["--config=configs/carotid.py", "--config.data.num_train=5"], "configs/cxr.py")


def test_workdir_resolution(tmp_path):
    config = config_lib.load_config_file("configs/carotid.py")
    assert config_lib.resolve_workdir(config, None).endswith("runs/carotid")
    assert config_lib.resolve_workdir(config, str(tmp_path)) == str(tmp_path)


def test_config_imports_without_jax():
    # configs and launch tools read configs on hosts (or in processes) that must not start JAX.
    import subprocess
    import sys

    code = "import sys, radflow_jax.config; print(sorted(m for m in ('jax', 'flax', 'optax') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("size, dtype, expected", [
    ("tiny", "auto", "float32"), ("base", "auto", "float32"), ("1b", "auto", "bfloat16"),
    ("7b", "auto", "bfloat16"), ("7b", "float32", "float32"), ("tiny", "bfloat16", "bfloat16"),
])
def test_compute_dtype_auto_is_bf16_for_billion_sizes(size, dtype, expected):
    from radflow_jax.runtime import compute_dtype

    config = config_lib.base_config()
    config.model.size, config.model.dtype = size, dtype
    assert compute_dtype(config.model) == expected


@pytest.mark.parametrize("size, loop, expected", [
    ("tiny", "auto", False), ("base", "auto", False), ("1b", "auto", True), ("7b", "auto", True),
    ("7b", "unroll", False), ("tiny", "scan", True),
])
def test_layer_loop_auto_scans_billion_sizes(size, loop, expected):
    from radflow_jax.runtime import make_policy_config, scan_layers

    config = config_lib.base_config()
    config.model.size, config.model.layer_loop = size, loop
    assert scan_layers(config.model) == expected
    assert make_policy_config(config, 100).scan_layers == expected


def test_layer_loop_rejects_unknown_values():
    config = config_lib.base_config()
    config.model.layer_loop = "rolled"
    with pytest.raises(ValueError, match="model.layer_loop"):
        config_lib.validate(config)
