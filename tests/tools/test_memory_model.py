"""tools/memory_model.py and configs/mimic_cxr_scale.py.

Every scale target validates and divides its batches over its 8-device mesh; on the toy model of
``:7b_h100,quick`` over a 2x2x2 mesh the analytic model agrees with ``jax.eval_shape`` and the
compiled (AOT, abstract inputs) SFT step and GRPO update of the trainers.
"""

import importlib.util
import json
import math
import os
import subprocess
import sys

import pytest

from radflow_jax import config as config_lib

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCALE = "configs/mimic_cxr_scale.py"


def _targets() -> dict:
    spec = importlib.util.spec_from_file_location("_scale_config", os.path.join(REPO, SCALE))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.TARGETS


@pytest.mark.parametrize("target", sorted(_targets()))
def test_scale_targets_validate_and_divide_over_their_mesh(target):
    config = config_lib.load_config_file(os.path.join(REPO, f"{SCALE}:{target}"))
    config.data.dir = "/data"  # required; never read here
    config = config_lib.validate(config)
    mesh = dict(config.mesh.shape)
    assert math.prod(mesh.values()) == 8  # the stated mesh is the one the tool compiles
    assert config.model.dtype == "bfloat16" and config.model.size == target.split("_")[0]
    rows = mesh["data"] * mesh["fsdp"]
    assert (config.sft.batch_size // config.sft.grad_accum) % rows == 0
    assert config.rl.batch_size % rows == 0 and config.eval.batch_size % rows == 0
    assert config.rl.max_new_tokens <= config.data.max_target_len  # the sampler's cache fits max_seq_len


def test_unknown_target_names_the_known_ones():
    with pytest.raises(ValueError, match="7b_h100"):
        config_lib.load_config_file(os.path.join(REPO, f"{SCALE}:7b_a100"))


def test_model_matches_eval_shape_and_the_compiled_steps_on_a_toy_mesh():
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO, env.get("PYTHONPATH")]))
    out = subprocess.run(
        [sys.executable, "tools/memory_model.py", f"--config={SCALE}:7b_h100,quick", "--parts=sft,grpo"],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    (res,) = json.loads(out.stdout.strip().splitlines()[-1])["results"]
    m, s, c = res["model"], res["eval_shape"], res["compiled"]
    assert res["mesh"] == {"data": 2, "fsdp": 2, "tensor": 2} and res["frozen"] == ["vision_tower"]
    assert m["param_count"] == s["param_count"]  # the formulas count every parameter
    for key in ("params", "grads", "optimizer", "reference"):  # norms/biases replicate: within 3 %
        assert m[key] == pytest.approx(s[key], rel=0.03), key
    for part in ("sft", "grpo"):
        step = c[part]
        # the arguments are the train state and the rows; the donated state is aliased by the output
        assert step["argument"] == pytest.approx(s["train_state"] + step["inputs"], rel=1e-3), part
        assert step["alias"] == pytest.approx(s["train_state"], rel=1e-3), part
        # temp holds the gradients and the activations: the model within a factor of 2
        assert 0.5 < m[f"{part}_temp"] / step["temp"] < 2.0, (part, m[f"{part}_temp"], step["temp"])
    assert res["compiled_phases"]["sft_peak"] == pytest.approx(
        c["sft"]["argument"] + c["sft"]["temp"] + c["sft"]["output"] - c["sft"]["alias"])
