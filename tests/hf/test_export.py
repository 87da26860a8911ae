"""Export: a briefly trained toy policy -> HF folder; transformers reproduces our logits and greedy ids.

Also: JAX -> HF -> JAX is bit-identical, bf16 and sharded safetensors, the README snippet runs, and
an export from parameters sharded over a 2-process, 8-device CPU mesh equals the single-device one.
"""

import contextlib
import io
import json
import os
import socket
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from absl import flags
from flax import nnx
from PIL import Image

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from radflow_jax import checkpoint as ckpt_lib  # noqa: E402
from radflow_jax import config as config_lib  # noqa: E402
from radflow_jax.data import pipeline  # noqa: E402
from radflow_jax.data.sections import parse_sections  # noqa: E402
from radflow_jax.data.synthetic import generate_case  # noqa: E402
from radflow_jax.data.tokenizer import train_tokenizer  # noqa: E402
from radflow_jax.hf import convert, export  # noqa: E402
from radflow_jax.hf.load import init_from_hf, load_pretrained, read_safetensors  # noqa: E402
from radflow_jax.rl.sampling import sample  # noqa: E402
from radflow_jax.sft.trainer import SFTRun  # noqa: E402

flags.FLAGS(["pytest"])
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SIZE, STEPS, MAX_NEW = 32, 4, 24


def _config():
    config = config_lib.load_config_file(os.path.join(REPO, "configs/cxr.py:quick"))
    config.data.image_size = SIZE
    config.data.max_target_len = 64
    config.eval.max_new_tokens = MAX_NEW
    config.sft.batch_size, config.sft.warmup_steps, config.sft.learning_rate = 4, 1, 3e-3
    return config_lib.validate(config)


def _batch(config, tokenizer, cases):
    d = config.data
    prompt = pipeline.prompt_tokens(tokenizer, d.prompt, d.max_prompt_len)
    targets = [pipeline.target_tokens(tokenizer, parse_sections(c.report), d.max_target_len) for c in cases]
    image = np.stack([c.images[0] for c in cases]).astype(np.float32) / 255.0 * 2.0 - 1.0
    return {
        "image": image[:, None, :, :, None],
        "view_mask": np.ones((len(cases), 1), bool),
        "prompt_tokens": np.tile(prompt, (len(cases), 1)),
        "prompt_mask": np.tile(prompt != tokenizer.pad_id, (len(cases), 1)),
        "target_tokens": np.stack(targets),
        "target_mask": np.stack(targets) != tokenizer.pad_id,
    }


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A workdir as ``radflow_jax.train`` leaves it: config, tokenizer, SFT checkpoint; plus PNGs."""
    workdir = str(tmp_path_factory.mktemp("hf_run"))
    config = _config()
    cases = [generate_case("cxr", 0, i, image_size=SIZE) for i in range(6)]
    tokenizer = train_tokenizer([c.report for c in cases], vocab_size=300, min_frequency=1)
    tokenizer.save(os.path.join(workdir, "tokenizer"))
    with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
        f.write(config.to_json_best_effort(indent=1, sort_keys=True))
    run = SFTRun(config, tokenizer.vocab_size)
    state = run.train.init_state()
    batch = run.device_batch(_batch(config, tokenizer, cases[:4]))
    for _ in range(STEPS):
        state, _ = run.step_fn(state, batch)
    directory = os.path.join(workdir, "checkpoints", "sft")
    with ckpt_lib.Checkpointer(directory, save_every=1, keep=1) as checkpointer:
        checkpointer.save(STEPS, state, config=config.to_dict())
    images = []
    for i, case in enumerate(cases[4:]):
        images.append(os.path.join(workdir, f"test{i}.png"))
        Image.fromarray(case.images[0], mode="L").save(images[-1])
    out = os.path.join(workdir, "hf")
    cli = subprocess.run([sys.executable, "-m", "radflow_jax.export", f"--workdir={workdir}", f"--out={out}",
                          f"--step={STEPS}"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0, cli.stderr[-3000:]
    assert f"exported sft step {STEPS}" in cli.stdout
    params = export.host_params(nnx.state(run.train.policy(state), nnx.Param))
    return dict(workdir=workdir, out=out, config=config, tokenizer=tokenizer, run=run, state=state,
                params=params, images=images, batch=batch)


@pytest.fixture(scope="module")
def hf_model(trained):
    model, info = transformers.AutoModelForImageTextToText.from_pretrained(
        trained["out"], output_loading_info=True
    )
    assert not any(info.values()), info  # no missing, unexpected or mismatched tensors
    processor = transformers.AutoProcessor.from_pretrained(trained["out"])
    return model.eval(), processor


def _our_batch(trained, prompts):
    """Our prefix batch for the test images, each with its prompt (left-padded like the pipeline)."""
    tok, d = trained["tokenizer"], trained["config"].data
    image = np.stack([pipeline._decode_gray(p, SIZE) for p in trained["images"]])
    tokens = np.stack([pipeline.prompt_tokens(tok, p, d.max_prompt_len) for p in prompts])
    return {
        "image": jnp.asarray(image)[:, None, :, :, None],
        "view_mask": jnp.ones((len(prompts), 1), bool),
        "prompt_tokens": jnp.asarray(tokens),
        "prompt_mask": jnp.asarray(tokens != tok.pad_id),
    }


def test_folder_has_every_file_transformers_needs(trained, hf_model):
    files = set(os.listdir(trained["out"]))
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
            "processor_config.json", "README.md"} <= files
    assert not any(f.endswith((".bin", ".pt")) for f in files)
    model, processor = hf_model
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    assert model.config.vision_config.model_type == "siglip_vision_model"
    assert model.config.text_config.model_type == "llama"
    card = open(os.path.join(trained["out"], "README.md"), encoding="utf-8").read()
    assert "not for clinical use" in card and f"step {STEPS}" in card and "synthetic" in card


def test_logits_match_in_fp32_with_left_padding(trained, hf_model):
    model, processor = hf_model
    tok = trained["tokenizer"]
    prompts = ["chest x-ray frontal view", "chest x-ray"]  # different lengths -> left padding
    ours = trained["run"].train.policy(trained["state"])
    batch = _our_batch(trained, prompts)
    our_logits = np.asarray(ours(*(batch[k] for k in ("image", "view_mask", "prompt_tokens", "prompt_mask"))))
    texts = [export.hf_prompt(tok, p, 1) for p in prompts]
    images = [Image.open(p) for p in trained["images"]]
    inputs = processor(images=images, text=texts, return_tensors="pt", padding=True)
    pixels = np.asarray(batch["image"])[:, 0, :, :, 0]
    np.testing.assert_allclose(inputs["pixel_values"][:, 0].numpy(), pixels, atol=1e-6)
    mask = inputs["attention_mask"]
    with torch.no_grad():
        hf_logits = model(**inputs, position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits.numpy()
    n = our_logits.shape[1]  # compare the prompt positions of every row where both have real tokens
    real = np.asarray(batch["prompt_mask"])
    assert real.sum() < real.size  # the short prompt really is padded
    diff = np.abs(hf_logits[:, -n:] - our_logits)[real]
    assert diff.max() < 1e-4, diff.max()


def test_greedy_generation_matches_ids_and_generate_cli(trained, hf_model):
    from radflow_jax import inference
    from radflow_jax.data.sections import parse_target
    from radflow_jax.scoring import report_text

    model, processor = hf_model
    tok, config, run = trained["tokenizer"], trained["config"], trained["run"]
    batch = _our_batch(trained, [config.data.prompt] * 2)
    graphdef, params = nnx.split(run.train.policy(trained["state"]))
    ours = sample(graphdef, params, batch, rng=jax.random.key(0), max_new_tokens=MAX_NEW,
                  greedy=True, eos_id=tok.eos_id, pad_id=tok.pad_id)
    text = export.hf_prompt(tok, config.data.prompt, 1)
    inputs = processor(images=[Image.open(p) for p in trained["images"]], text=[text] * 2,
                       return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(**inputs)  # generation_config.json: greedy, MAX_NEW tokens
    hf_ids = out[:, inputs["input_ids"].shape[1]:].numpy()
    our_ids = np.asarray(ours.tokens)
    for row in range(2):
        length = int(ours.lengths[row])
        assert length > 3
        np.testing.assert_array_equal(hf_ids[row, :length], our_ids[row, :length])
    reports = inference.generate_reports(config, tok, run, trained["state"], [[p] for p in trained["images"]])
    # the CLI's text, formatted by the CLI's own helpers from HF's ids
    assert reports == [report_text(parse_target(tok.decode(ids))) for ids in hf_ids]


def test_readme_snippet_generates_the_same_report(trained, hf_model):
    tok = trained["tokenizer"]
    snippet = export.usage_snippet(trained["out"], export.hf_prompt(tok, trained["config"].data.prompt, 1),
                                   trained["images"][0])
    assert len(snippet.splitlines()) == 6
    card = open(os.path.join(trained["out"], "README.md"), encoding="utf-8").read()
    assert export.usage_snippet(".", export.hf_prompt(tok, trained["config"].data.prompt, 1)) in card
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(snippet, {})
    _, processor = hf_model
    batch = _our_batch(trained, [trained["config"].data.prompt])
    batch = {k: v[:1] for k, v in batch.items()}
    graphdef, params = nnx.split(trained["run"].train.policy(trained["state"]))
    ours = sample(graphdef, params, batch, rng=jax.random.key(0), max_new_tokens=MAX_NEW, greedy=True,
                  eos_id=tok.eos_id, pad_id=tok.pad_id)
    ids = np.asarray(ours.tokens[0, : int(ours.lengths[0])])
    assert printed.getvalue().strip() == processor.decode(ids, skip_special_tokens=True).strip()
    assert printed.getvalue().strip()


def test_round_trip_is_bit_identical(trained):
    policy, report = load_pretrained(trained["out"])
    assert report.exact and report.ignored == ()
    back = convert.flatten(nnx.to_pure_dict(nnx.state(policy, nnx.Param)))
    back = {k: np.asarray(v) for k, v in back.items()}
    assert back.keys() == trained["params"].keys()
    for key, value in trained["params"].items():
        assert back[key].dtype == value.dtype and np.array_equal(back[key], value), key


def test_init_from_hf_fills_a_training_state(trained):
    run = trained["run"]
    state = init_from_hf(run.train, trained["out"])
    model = convert.flatten(nnx.to_pure_dict(state)[0])
    for key, value in trained["params"].items():
        assert np.array_equal(np.asarray(model[key]), value), key
    fresh = convert.flatten(nnx.to_pure_dict(state)[1])
    assert all(not np.any(np.asarray(v)) for k, v in fresh.items() if ".mu." in k)  # fresh optimizer
    state, metrics = run.step_fn(state, trained["batch"])  # trains on from there
    assert np.isfinite(float(metrics["loss"]))


def test_bfloat16_and_sharded_files(trained, tmp_path):
    cfg = trained["run"].train.model_config
    provenance = json.load(open(os.path.join(trained["out"], export.PROVENANCE_NAME), encoding="utf-8"))
    out = str(tmp_path / "bf16")
    export.export_policy(trained["params"], cfg, os.path.join(trained["workdir"], "tokenizer"), out,
                         provenance=provenance, dtype="bfloat16", max_shard_bytes=20_000)
    index = json.load(open(os.path.join(out, export.INDEX_NAME), encoding="utf-8"))
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and "model.safetensors" not in os.listdir(out)
    model = transformers.AutoModelForImageTextToText.from_pretrained(out)
    assert model.dtype == torch.bfloat16
    tensors = read_safetensors(out)
    assert tensors.keys() == set(index["weight_map"])
    policy, _ = load_pretrained(out)
    back = convert.flatten(nnx.to_pure_dict(nnx.state(policy, nnx.Param)))
    for key, value in trained["params"].items():
        expected = value.astype(ml_dtypes.bfloat16).astype(np.float32)
        np.testing.assert_array_equal(np.asarray(back[key]), expected, err_msg=key)


_SHARDED_EXPORT = textwrap.dedent("""
    import json, os, sys
    import jax
    process, port, workdir, out = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    jax.config.update("jax_num_cpu_devices", 4)
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2,
                               process_id=process, coordinator_bind_address=f"127.0.0.1:{port}",
                               initialization_timeout=60)
    import ml_collections
    from absl import flags
    from flax import nnx
    from radflow_jax import checkpoint as ckpt_lib
    from radflow_jax.data.tokenizer import ReportTokenizer
    from radflow_jax.hf import export
    from radflow_jax.sft.trainer import SFTRun

    flags.FLAGS(["x"])
    assert jax.device_count() == 8 and jax.process_count() == 2
    config = ml_collections.ConfigDict(json.load(open(os.path.join(workdir, "config.json"))))
    config.mesh.shape = {"data": 1, "fsdp": 4, "tensor": 2}
    run = SFTRun(config, ReportTokenizer.load(os.path.join(workdir, "tokenizer")).vocab_size)
    with ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints", "sft"), save_every=1, keep=1) as c:
        state, step = c.restore(run.train.abstract_state)
    params = nnx.state(run.train.policy(state), nnx.Param)
    split = [x for x in jax.tree.leaves(params)
             if not x.is_fully_addressable and not x.sharding.is_fully_replicated]
    assert len(split) > 10, len(split)  # shards really live on the other process too
    provenance = json.load(open(os.path.join(workdir, "hf", export.PROVENANCE_NAME)))
    export.export_policy(export.host_params(params), run.train.model_config,
                         os.path.join(workdir, "tokenizer"), out, provenance=provenance)
""")


def test_export_from_a_two_process_8_device_mesh_equals_single_device(trained, tmp_path):
    """2 processes x 4 CPU devices, parameters split over both: the gather must collect every shard."""
    out = str(tmp_path / "sharded")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    procs = [subprocess.Popen([sys.executable, "-c", _SHARDED_EXPORT, str(i), port, trained["workdir"], out],
                              env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    logs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(log[-2000:] for log in logs)
    single, sharded = read_safetensors(trained["out"]), read_safetensors(out)
    assert single.keys() == sharded.keys()
    for key in single:
        np.testing.assert_array_equal(single[key], sharded[key], err_msg=key)
