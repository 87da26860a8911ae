"""Per-device memory of a config: an analytic model, ``jax.eval_shape``, and the compiled real steps.

    python tools/memory_model.py --config=configs/mimic_cxr_scale.py:7b_h100 [--config=...] \
        [--devices=8] [--parts=sft,grpo,sampler,reference] [--vocab_size=N] [--markdown]
    python tools/memory_model.py --from_json=saved_output.txt   # re-print a run's tables

For each config, three views of the same per-device bytes:

- **model**: formulas from the model sizes, mesh and batch shapes (``analytic_memory``): parameters,
  gradients, AdamW moments, the bf16 KL reference, activations kept for the backward pass, the
  KV cache of the ``B x G`` rollout rows.
- **eval_shape**: the train state's abstract arrays (``PolicyTrainState.abstract_state``, built
  with ``jax.eval_shape``) and their ``NamedSharding``s: exact per-device bytes of every leaf.
- **compiled**: the project's own jitted SFT step and GRPO update (``SFTRun.step_fn``,
  ``RLRun.update_fn``), the rollout sampler (what ``sample(..., mesh=, rules=)`` jits, taken from
  ``rl.sampling._sharded_sampler``) and the reference log-prob pass (``RLRun.ref_logp_fn``), lowered on abstract
  ``ShapeDtypeStruct`` inputs and AOT-compiled for ``--devices`` simulated CPU devices (nothing is
  allocated); ``compiled.memory_analysis()`` gives per-device argument, output, alias and temp
  bytes, so a step's peak is ``arguments + temp + outputs - aliased`` (donated state).

Phase peaks of the RL stage add what lives outside the compiled function: during rollouts and the
reference pass the optimizer moments, during the update the reference weights, and in
``radflow_jax.train`` the SFT train state it still holds. Prints one table per config, then one
JSON line with every number (``docs/scaling.md`` is written from it).
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import math
import os
import re
import sys
import time

GB = 1e9
PARTS = ("sft", "grpo", "sampler", "reference")
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"

# Chips of the scale configs (configs/mimic_cxr_scale.py TARGETS): HBM per chip, dense bf16 peak,
# HBM bandwidth and the per-chip interconnect bandwidth one way (NVLink 4 / ICI), vendor figures.
CHIPS = {
    "h100": dict(name="H100 SXM 80 GB", hbm_gb=80.0, peak_tflops=989.0, hbm_tbps=3.35, link_gbps=450.0),
    "v5p": dict(name="TPU v5p", hbm_gb=95.0, peak_tflops=459.0, hbm_tbps=2.765, link_gbps=600.0),
    "v6e": dict(name="TPU v6e", hbm_gb=32.0, peak_tflops=918.0, hbm_tbps=1.64, link_gbps=448.0),
}
MFU = 0.40  # assumed model-FLOPs utilisation of the train and reference passes (recompute excluded)
HBM_EFFICIENCY = 0.6  # assumed share of HBM / link bandwidth a decode step reaches


# ----------------------------------------------------------------------------- the analytic model


def param_counts(cfg) -> dict[str, int]:
    """Parameter scalars per module of a ``PolicyConfig``, from its sizes alone."""
    v, t = cfg.vision, cfg.text
    d, m = v.hidden, v.mlp
    vit_layer = 4 * d * d + 4 * d + 2 * d * m + m + d + 4 * d  # q,k,v,o (+biases), fc1/fc2, 2 LNs
    vision = v.patch_size**2 * v.channels * d + d + v.num_patches * d + v.layers * vit_layer + 2 * d
    projector = d * t.hidden + t.hidden + t.hidden * t.hidden + t.hidden
    q, kv = t.heads * t.head_dim, t.kv_heads * t.head_dim
    dec_layer = t.hidden * (q + 2 * kv) + q * t.hidden + 3 * t.hidden * t.mlp + 2 * t.hidden
    dec_layer += (q + 2 * kv) if t.attention_bias else 0
    text = 2 * t.vocab_size * t.hidden + t.layers * dec_layer + t.hidden
    return dict(vision_tower=vision, multi_modal_projector=projector, language_model=text,
                vit_layer=vit_layer, dec_layer=dec_layer)


def _split(n: int, shards: int) -> float:
    """Per-device share of a dimension of ``n`` over ``shards`` (replicated when they do not divide)."""
    return n / shards if n % shards == 0 else float(n)


def decoder_stash_per_token(t, remat: str, tensor: int, length: int, e: int = 2) -> float:
    """Bytes one decoder layer keeps per token for the backward pass under ``remat``.

    ``full``: the layer's input (the scan carry). ``dots_saveable``: the carry plus the outputs of
    the seven projections. ``none``: also the norm outputs, roped q/k, the attention output, the
    SwiGLU intermediates and the float32 + bf16 attention probabilities (6 bytes per head and key).
    """
    d, m = t.hidden, _split(t.mlp, tensor)
    q, kv = _split(t.heads, tensor) * t.head_dim, _split(t.kv_heads, tensor) * t.head_dim
    if remat == "full":
        return e * d
    if remat == "dots_saveable":
        return e * (3 * d + q + 2 * kv + 2 * m)
    return e * (4 * d + 2 * q + 2 * kv + 4 * m) + 6 * _split(t.heads, tensor) * length


def vit_forward_per_token(v, tensor: int, e: int = 2) -> float:
    """Bytes of one ViT layer's forward working set per patch (a frozen tower keeps nothing)."""
    return e * (4 * v.hidden + 2 * _split(v.mlp, tensor)) + 4 * _split(v.heads, tensor) * v.num_patches


def analytic_memory(cfg, config, mesh: dict[str, int], frozen: tuple[str, ...]) -> dict[str, float]:
    """Per-device bytes of every term of the SFT step and the RL stage, from formulas only.

    Rows are split over ``data x fsdp`` (the ``batch`` rule), parameters over ``fsdp x tensor``,
    heads, MLP and vocabulary over ``tensor``. Training keeps per layer what ``remat`` saves, plus
    the working set of the one layer being recomputed (its un-rematerialised activations and
    attention gradients), one chunk of float32 logits (3 copies), the embedding table gathered
    whole along ``embed``, and under FSDP one layer's gathered float32 weights and full gradient.
    """
    t, v = cfg.text, cfg.vision
    data, fsdp, tensor = mesh["data"], mesh["fsdp"], mesh["tensor"]
    rows_shards, param_shards = data * fsdp, fsdp * tensor
    counts = param_counts(cfg)
    total = sum(counts[k] for k in ("vision_tower", "multi_modal_projector", "language_model"))
    trainable = total - sum(counts[k] for k in frozen)
    d, s, r = config.data, config.sft, config.rl
    n_img = d.max_views * v.num_patches
    heads = _split(t.heads, tensor)
    out = {"param_count": float(total), "params": 4 * total / param_shards, "grads": 4 * trainable / param_shards,
           "optimizer": 8 * trainable / param_shards,
           "reference": (2 * total / param_shards) if r.beta > 0 else 0.0}
    out["train_state"] = out["params"] + out["optimizer"]
    gathered = (counts["dec_layer"] / tensor) if fsdp > 1 else 0.0  # one layer's weights, all of them

    def activations(rows: int, target: int, train: bool, image_rows: int | None = None) -> float:
        """``image_rows``: the cases whose images are encoded (an RL group shares its case's)."""
        length = n_img + d.max_prompt_len + target - 1
        rows_local = rows / rows_shards
        tokens = rows_local * length
        working = (decoder_stash_per_token(t, "none", tensor, length) + 6 * heads * length) * tokens
        layers = (v.layers + 1) if (train and "vision_tower" not in frozen) else 1
        vision = layers * vit_forward_per_token(v, tensor) * (image_rows or rows) / rows_shards * n_img
        chunk = min(config.model.logits_chunk or target, target)
        logits = 3 * 4 * rows_local * chunk * _split(t.vocab_size, tensor)
        embed_table = 4 * _split(t.vocab_size, tensor) * t.hidden
        if not train:  # a forward pass keeps no stash: the bf16 reference, its layer gathered
            return working + vision + logits + embed_table + 2 * gathered
        stash = t.layers * decoder_stash_per_token(t, cfg.remat, tensor, length) * tokens
        cotangents = 8 * t.hidden * tokens  # float32 gradient of the residual stream (2 copies)
        return stash + working + cotangents + vision + logits + embed_table + 8 * gathered

    def stash(rows: int, target: int) -> float:  # the part of ``activations`` the layer scan stacks
        length = n_img + d.max_prompt_len + target - 1
        return t.layers * decoder_stash_per_token(t, cfg.remat, tensor, length) * rows / rows_shards * length

    out["sft_stash"] = stash(s.batch_size // s.grad_accum, d.max_target_len)
    out["grpo_stash"] = stash(r.batch_size * r.group_size, r.max_new_tokens or d.max_target_len)
    out["sft_activations"] = activations(s.batch_size // s.grad_accum, d.max_target_len, train=True)
    accum_carry = out["grads"] if s.grad_accum > 1 else 0.0  # the scan's running sum of gradients
    out["sft_temp"] = out["grads"] + accum_carry + out["sft_activations"]
    new = r.max_new_tokens or d.max_target_len
    completions = r.batch_size * r.group_size
    out["grpo_activations"] = activations(completions, new, train=True, image_rows=r.batch_size)
    out["grpo_temp"] = out["grads"] + out["grpo_activations"]
    out["reference_temp"] = activations(completions, new, train=False, image_rows=r.batch_size) if r.beta > 0 else 0.0
    capacity = n_img + d.max_prompt_len + new
    out["kv_cache"] = (2 * 2 * t.layers * completions / rows_shards * capacity
                       * _split(t.kv_heads, tensor) * t.head_dim)
    prefill = activations(r.batch_size, 1, train=False)  # the prompts' forward, once per prompt
    out["sampler_temp"] = out["kv_cache"] + prefill + 4 * gathered
    resident = out["train_state"] + out["reference"]
    out["sft_peak"] = out["train_state"] + out["sft_temp"]
    out["rl_update"] = resident + out["grpo_temp"]
    out["rl_rollout"] = resident + out["sampler_temp"]
    out["rl_reference"] = resident + out["reference_temp"]
    out["rl_peak"] = max(out["rl_update"], out["rl_rollout"], out["rl_reference"])
    out["rl_peak_in_train_py"] = out["rl_peak"] + out["train_state"]  # + the SFT state train.py holds
    return out


# ---------------------------------------------------------------------------------- eval_shape


def device_bytes(tree) -> float:
    """Per-device bytes of a pytree of sharded ``ShapeDtypeStruct``s (a shard per device)."""
    import jax

    return float(sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(tree)))


def eval_shape_memory(train, frozen: tuple[str, ...], beta: float) -> dict[str, float]:
    """Per-device bytes of the abstract train state, by part (exact shapes and shardings)."""
    import jax
    import jax.numpy as jnp

    policy, optimizer = train.abstract_state[0], train.abstract_state[1]
    leaves = jax.tree_util.tree_leaves_with_path(policy)

    def trainable(path) -> bool:
        return getattr(path[0], "key", None) not in frozen

    def bf16(x):
        return jax.ShapeDtypeStruct(x.shape, jnp.bfloat16 if jnp.issubdtype(x.dtype, jnp.floating) else x.dtype,
                                    sharding=x.sharding)

    out = {"params": device_bytes(policy), "optimizer": device_bytes(optimizer),
           "grads": device_bytes([x for p, x in leaves if trainable(p)]),
           "reference": device_bytes(jax.tree.map(bf16, policy)) if beta > 0 else 0.0,
           "param_count": float(sum(x.size for x in jax.tree.leaves(policy)))}
    out["train_state"] = out["params"] + out["optimizer"]
    return out


# ------------------------------------------------------------------------------- compiled steps


def _stats(compiled) -> dict[str, float]:
    m = compiled.memory_analysis()
    out = {k: float(getattr(m, f"{k}_size_in_bytes")) for k in ("argument", "output", "alias", "temp")}
    out["peak"] = out["argument"] + out["temp"] + out["output"] - out["alias"]
    return out


def loop_stash(hlo: str, layers: int, rows: int, length: int) -> dict[str, float]:
    """Bytes, by dtype, of the per-layer activations ``[layers, rows, length, ...]`` that the
    compiled program's while loops (the layer scans) carry, the largest loop's.

    JAX stacks the saved activations in the compute dtype (bf16), as the lowered StableHLO shows;
    XLA:CPU's compiled program can hold them as float32 instead, so the ``f32`` share here is CPU
    overhead that the model does not count (docs/scaling.md).
    """
    best = {"f32": 0.0, "bf16": 0.0}
    for line in hlo.splitlines():
        if " while(" not in line:
            continue
        found = {"f32": 0.0, "bf16": 0.0}
        for m in re.finditer(r"\b(bf16|f32)\[([0-9,]+)\]", line.split(" while(")[0]):
            dims = [int(x) for x in m.group(2).split(",")]
            if len(dims) >= 3 and dims[:3] == [layers, rows, length]:
                found[m.group(1)] += math.prod(dims) * (4 if m.group(1) == "f32" else 2)
        if sum(found.values()) > sum(best.values()):
            best = found
    return best


def abstract_inputs(shapes: dict, runtime) -> dict:
    """``{name: (shape, dtype)}`` -> ``ShapeDtypeStruct``s sharded over rows as ``device_batch`` does."""
    import jax

    from radflow_jax.parallel import mesh as mesh_lib

    return {k: jax.ShapeDtypeStruct(s, dt, sharding=mesh_lib.batch_sharding(runtime.mesh, runtime.rules, len(s)))
            for k, (s, dt) in shapes.items()}


def model_batch(config, rows: int, runtime) -> dict:
    """Abstract model inputs of ``rows`` studies at the longest target (what a length bucket allows)."""
    import jax.numpy as jnp

    d = config.data
    return abstract_inputs({
        "image": ((rows, d.max_views, d.image_size, d.image_size, 1), jnp.float32),
        "view_mask": ((rows, d.max_views), bool),
        "prompt_tokens": ((rows, d.max_prompt_len), jnp.int32), "prompt_mask": ((rows, d.max_prompt_len), bool),
        "target_tokens": ((rows, d.max_target_len), jnp.int32), "target_mask": ((rows, d.max_target_len), bool),
    }, runtime)


def compiled_memory(config, run_config, vocab: int, frozen: tuple[str, ...], parts: tuple[str, ...], log) -> dict:
    """memory_analysis() of the real jitted steps of ``config`` on abstract inputs, per part."""
    import jax
    import jax.numpy as jnp

    from radflow_jax.rl import trainer as rl_trainer
    from radflow_jax.rl import sampling
    from radflow_jax.sft.trainer import SFTRun

    out: dict[str, dict] = {}

    t, d = run_config.text, config.data
    n_img = d.max_views * run_config.vision.num_patches
    rows_shards = config.mesh.shape.data * config.mesh.shape.fsdp

    def timed(name, fn, inputs, stash_rows: float = 0, target: int = 0):
        start = time.perf_counter()
        compiled = fn()
        out[name] = dict(_stats(compiled), inputs=device_bytes(inputs))  # inputs: batch/rollout rows
        out[name]["compile_s"] = time.perf_counter() - start
        if stash_rows:
            stash = loop_stash(compiled.as_text(), t.layers, int(stash_rows / rows_shards),
                               n_img + d.max_prompt_len + target - 1)
            out[name].update(stash_f32=stash["f32"], stash_bf16=stash["bf16"])
        log(f"  compiled {name} in {out[name]['compile_s']:.0f} s")

    if "sft" in parts:
        sft = SFTRun(config, vocab, frozen=frozen)
        batch = model_batch(config, config.sft.batch_size, sft.runtime)
        timed("sft", lambda: sft.step_fn.lower(sft.train.abstract_state, batch).compile(), batch,
              config.sft.batch_size // config.sft.grad_accum, d.max_target_len)
    if not {"grpo", "sampler", "reference"} & set(parts):
        return out
    r = config.rl
    run = rl_trainer.RLRun(config, vocab, frozen=frozen)
    n, new = r.batch_size * r.group_size, rl_trainer.max_new_tokens(config)
    batch = model_batch(config, r.batch_size, run.runtime)
    f32 = jnp.float32
    rollout = abstract_inputs({
        "tokens": ((n, new), jnp.int32), "mask": ((n, new), bool), "old_logp": ((n, new), f32),
        "ref_logp": ((n, new), f32), "advantages": ((n,), f32), "eps_low": ((n,), f32),
        "eps_high": ((n,), f32), "beta": ((n,), f32), "token_weights": ((n, new), f32),
        "truncated": ((n,), bool),
    }, run.runtime)
    rollout["first_pass"] = jax.ShapeDtypeStruct((), bool, sharding=jax.sharding.NamedSharding(
        run.runtime.mesh, jax.sharding.PartitionSpec()))
    policy = run.train.abstract_state[0]
    if "grpo" in parts:
        timed("grpo", lambda: run.update_fn.lower(run.train.abstract_state, batch, rollout).compile(),
              (batch, rollout), n, new)
    if "sampler" in parts:  # what sample(..., mesh=, rules=) jits for these shapes (rl_step, eval)
        from radflow_jax.models.sharding import canonical_rules, sharding_rules

        settings = sampling.SamplerSettings(
            max_new_tokens=new, group_size=r.group_size, temperature=float(r.temperature), top_k=r.top_k,
            top_p=float(r.top_p), greedy=False, eos_id=2, pad_id=0)
        prefix = {k: batch[k] for k in sampling.PREFIX_KEYS}
        rng = jax.ShapeDtypeStruct((), jax.random.key(0).dtype)
        mesh, rules = run.runtime.mesh, canonical_rules(run.runtime.rules)

        def lower_sampler():
            with sharding_rules(mesh, rules):
                jitted = sampling._sharded_sampler(run.train.policy_def, settings, mesh, rules, policy, prefix)
                return jitted.lower(policy, prefix, rng)

        timed("sampler", lambda: lower_sampler().compile(), prefix)
    if "reference" in parts:
        compute = run.train.model_config.compute_dtype
        ref = jax.tree.map(lambda x: jax.ShapeDtypeStruct(
            x.shape, compute if jnp.issubdtype(x.dtype, jnp.floating) else x.dtype, sharding=x.sharding), policy)
        timed("reference", lambda: run.ref_logp_fn.lower(ref, batch, rollout["tokens"], rollout["mask"]).compile(),
              (batch, rollout["tokens"], rollout["mask"]))
    return out


def compiled_phases(compiled: dict, shapes: dict) -> dict[str, float]:
    """Per-device peaks of the SFT step and each RL phase, from the compiled figures plus what
    stays resident outside each compiled function (eval_shape bytes)."""
    out = {}
    state, ref = shapes["train_state"], shapes["reference"]
    if "sft" in compiled:
        out["sft_peak"] = compiled["sft"]["peak"]
    if "grpo" in compiled:
        out["rl_update"] = compiled["grpo"]["peak"] + ref
    if "sampler" in compiled:  # its arguments are the policy variables the train state holds
        s = compiled["sampler"]
        out["rl_rollout"] = state + ref + s["argument"] - shapes["params"] + s["temp"] + s["output"]
    if "reference" in compiled:  # its arguments are the reference weights and the rollout rows
        rp = compiled["reference"]
        out["rl_reference"] = state + rp["argument"] + rp["temp"] + rp["output"]
    rl = [out[k] for k in ("rl_update", "rl_rollout", "rl_reference") if k in out]
    if rl:
        out["rl_peak"] = max(rl)
        out["rl_peak_in_train_py"] = out["rl_peak"] + state
    return out


# ---------------------------------------------------------------------------------- throughput


def flops_per_sequence(cfg, prompt_len: int, target_len: int, views: int, frozen: tuple[str, ...]) -> dict:
    """Model FLOPs of one teacher-forced sequence: forward, and forward + backward (3x for what is
    trained; a frozen tower runs forward only). Attention counts the full square the code computes."""
    t, v = cfg.text, cfg.vision
    c = param_counts(cfg)
    n = v.num_patches
    length = views * n + prompt_len + target_len - 1
    q = t.heads * t.head_dim
    decoder = 2 * t.layers * c["dec_layer"] * length + 4 * t.layers * length * length * q
    head = 2 * t.hidden * t.vocab_size * target_len
    vision = views * (2 * v.layers * c["vit_layer"] * n + 4 * v.layers * n * n * v.hidden
                      + 2 * v.patch_size**2 * v.channels * v.hidden * n)
    projector = views * 2 * c["multi_modal_projector"] * n
    forward = decoder + head + vision + projector
    train = 3 * (decoder + head + projector) + (1 if "vision_tower" in frozen else 3) * vision
    prefix = views * n + prompt_len  # a rollout's prefill: the image and prompt tokens, once per prompt
    prefill = 2 * t.layers * c["dec_layer"] * prefix + 4 * t.layers * prefix * prefix * q + vision + projector
    image_train = (1 if "vision_tower" in frozen else 3) * vision + 3 * projector
    return dict(forward=forward, train=train, prefill=prefill, image_forward=vision + projector,
                image_train=image_train)


def throughput(cfg, config, mesh: dict[str, int], frozen: tuple[str, ...], chip: dict) -> dict[str, float]:
    """Per-chip SFT samples/s and RL completions/s at ``MFU``; decode steps by a bandwidth roofline."""
    d, r, t = config.data, config.rl, cfg.text
    devices = math.prod(mesh.values())
    peak = chip["peak_tflops"] * 1e12 * MFU
    sft = flops_per_sequence(cfg, d.max_prompt_len, d.max_target_len, d.max_views, frozen)
    new = r.max_new_tokens or d.max_target_len
    rl = flops_per_sequence(cfg, d.max_prompt_len, new, d.max_views, frozen)
    c = param_counts(cfg)
    n = r.batch_size * r.group_size
    rows = n / (mesh["data"] * mesh["fsdp"])
    capacity = d.max_views * cfg.vision.num_patches + d.max_prompt_len + new
    decoder_params = t.layers * c["dec_layer"] + t.hidden * t.vocab_size
    kv_local = 2 * 2 * t.layers * rows * capacity * _split(t.kv_heads, mesh["tensor"]) * t.head_dim
    weights_local = 4 * decoder_params / mesh["tensor"]  # gathered fp32 weights every device reads
    step_flops = rows * (2 * decoder_params / mesh["tensor"] + 4 * t.layers * capacity * t.heads * t.head_dim)
    hbm = (weights_local + kv_local) / (chip["hbm_tbps"] * 1e12 * HBM_EFFICIENCY)
    gather = (4 * decoder_params * (1 - 1 / mesh["fsdp"]) / mesh["tensor"]) / (chip["link_gbps"] * 1e9 * HBM_EFFICIENCY)
    decode_step = max(step_flops / peak, hbm, gather)
    # what-if: decode from a bf16 copy of the decoder gathered once per rollout (no per-token gather)
    copy_step = max(step_flops / peak, (2 * decoder_params / mesh["tensor"] + kv_local)
                    / (chip["hbm_tbps"] * 1e12 * HBM_EFFICIENCY))
    # a group's G completions share their case's image features: the images run once per case
    update_flops = n * (rl["train"] - rl["image_train"]) + r.batch_size * rl["image_train"]
    forward_flops = n * (rl["forward"] - rl["image_forward"]) + r.batch_size * rl["image_forward"]
    update_s = r.num_iterations * update_flops / (devices * peak)
    reference_s = (forward_flops / (devices * peak)) if r.beta > 0 else 0.0
    prefill_s = r.batch_size * rl["prefill"] / (devices * peak)
    rollout_s = prefill_s + new * decode_step
    step_s = rollout_s + reference_s + update_s
    return dict(sft_flops_per_sample=sft["train"], sft_samples_per_s_per_chip=peak / sft["train"],
                sft_tokens_per_s_per_chip=peak / sft["train"] * (d.max_prompt_len + d.max_target_len),
                decode_step_ms=1e3 * decode_step, decode_bound="gather" if decode_step == gather else
                ("hbm" if decode_step == hbm else "compute"),
                rl_rollout_s=rollout_s, rl_reference_s=reference_s, rl_update_s=update_s, rl_step_s=step_s,
                rl_completions_per_s_per_chip=n / step_s / devices,
                rl_completions_per_s_per_chip_without_rollout=n / (reference_s + update_s) / devices,
                decode_step_ms_bf16_copy=1e3 * copy_step,
                rl_completions_per_s_per_chip_bf16_copy=n / (prefill_s + new * copy_step + reference_s + update_s)
                / devices)


# -------------------------------------------------------------------------------------- driver


def scale_target(spec: str) -> dict | None:
    """The ``TARGETS`` entry of a ``path:arg`` spec whose module declares one (scale configs)."""
    path, _, arg = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location("_radflow_scale_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    targets = getattr(module, "TARGETS", {})
    words = [w for w in (arg or "").split(",") if w]
    if not words or words[0] not in targets or "quick" in words:
        return None
    return dict(targets[words[0]], **CHIPS[targets[words[0]]["chip"]])


def analyse(spec: str, parts: tuple[str, ...], vocab: int | None, log=print) -> dict:
    """Every number of one config: model, eval_shape, compiled and the verdicts."""
    from radflow_jax import config as config_lib
    from radflow_jax import optim
    from radflow_jax.runtime import PolicyTrainState, Runtime, make_policy_config

    config = config_lib.load_config_file(spec)
    if not config.data.dir:
        config.data.dir = "/nonexistent"  # never read: shapes come from the config
    config = config_lib.validate(config)
    vocab = vocab or config.tokenizer.vocab_size
    frozen = ("vision_tower",) if config.vision.freeze else ()  # a warm-up or init.from_hf tower
    runtime = Runtime(config)
    mesh = dict(runtime.mesh.shape)
    cfg = make_policy_config(config, vocab)
    train = PolicyTrainState(runtime, cfg, optim.make_optimizer(config.sft)[0], frozen=frozen)
    shapes = eval_shape_memory(train, frozen, config.rl.beta)
    model = analytic_memory(cfg, config, mesh, frozen)
    compiled = compiled_memory(config, cfg, vocab, frozen, parts, log) if parts else {}
    phases = compiled_phases(compiled, shapes)
    target = scale_target(spec)
    result = dict(config=spec, size=config.model.size, mesh=mesh, dtype=cfg.dtype, remat=cfg.remat,
                  vocab=vocab, frozen=list(frozen), logits_chunk=config.model.logits_chunk,
                  sft_batch=config.sft.batch_size, grad_accum=config.sft.grad_accum,
                  rl_batch=config.rl.batch_size, group_size=config.rl.group_size,
                  max_new_tokens=config.rl.max_new_tokens or config.data.max_target_len,
                  model=model, eval_shape=shapes, compiled=compiled, compiled_phases=phases, target=target)
    if target:
        budget = target["hbm_gb"] * GB
        result["throughput"] = throughput(cfg, config, mesh, frozen, target)
        result["fits"] = {k: phases[k] <= budget for k in ("sft_peak", "rl_peak", "rl_peak_in_train_py")
                          if k in phases}
    return result


def _row(name: str, *values, unit: float = GB) -> str:
    cells = [f"{v / unit:>11.2f}" if isinstance(v, float) else f"{'-':>11}" for v in values]
    return f"  {name:<30}" + "".join(cells)


def print_report(res: dict) -> None:
    m, s, c, p = res["model"], res["eval_shape"], res["compiled"], res["compiled_phases"]
    target = res["target"]
    where = f" on {target['slice']} ({target['name']}, {target['hbm_gb']:.0f} GB)" if target else ""
    print(f"\n{res['config']}: {res['size']} ({s['param_count'] / 1e9:.2f} B params), mesh {res['mesh']}, "
          f"{res['dtype']}, remat {res['remat']}{where}")
    unit, unit_name = (GB, "GB") if s["train_state"] > GB else (1e6, "MB")
    row = functools.partial(_row, unit=unit)
    print(f"  {'per device, ' + unit_name:<30}{'model':>11}{'eval_shape':>11}{'compiled':>11}")
    for key in ("params", "grads", "optimizer", "reference", "train_state"):
        print(row(key, m[key], s[key], None))
    print(row("kv cache (B x G rows)", m["kv_cache"], None, None))

    def get(part, field):
        return c[part][field] if part in c else None

    print(row("sft step: arguments", m["train_state"], s["train_state"], get("sft", "argument")))
    for part in ("sft", "grpo", "reference", "sampler"):
        print(row(f"{part}: temp", m[f"{part}_temp"], None, get(part, "temp")))
        if part in ("sft", "grpo") and part in c:
            print(row("  of it the layer stash", m[f"{part}_stash"], None, c[part]["stash_bf16"] + c[part]["stash_f32"]))
            print(row("  of that float32 (XLA:CPU)", None, None, c[part]["stash_f32"]))
    for key in ("sft_peak", "rl_update", "rl_rollout", "rl_reference", "rl_peak", "rl_peak_in_train_py"):
        print(row(key, m[key], None, p.get(key)))
    if target:
        t = res["throughput"]
        print(f"  fits {target['hbm_gb']:.0f} GB by the compiled figure: "
              + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in res["fits"].items()))
        print(f"  at {MFU:.0%} MFU of {target['peak_tflops']:.0f} TFLOP/s: SFT {t['sft_samples_per_s_per_chip']:.1f}"
              f" samples/s/chip; RL {t['rl_completions_per_s_per_chip']:.2f} completions/s/chip (decode"
              f" {t['decode_step_ms']:.1f} ms/step, {t['decode_bound']}-bound)")


def markdown(results: list[dict]) -> str:
    """The tables of docs/scaling.md: per-device memory (model / compiled, GB) and throughput."""

    def gb(x):
        return "-" if x is None else f"{x / GB:.1f}"

    lines = ["| config | params | mesh (d, f, t) | remat | train state (model / eval_shape) | SFT step "
             "| GRPO update | rollout | reference pass | RL peak | RL in `train.py` | HBM | fits |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for res in results:
        m, s, p, tg = res["model"], res["eval_shape"], res["compiled_phases"], res["target"] or {}
        mesh = res["mesh"]
        cells = [f"{gb(m[k])} / {gb(p.get(k))}" for k in
                 ("sft_peak", "rl_update", "rl_rollout", "rl_reference", "rl_peak", "rl_peak_in_train_py")]
        fits = res.get("fits", {})
        if not fits:
            verdict = "-"
        elif all(fits.values()):
            verdict = "yes"
        else:  # the RL stage fits on its own, not beside the SFT state train.py keeps
            verdict = "outside train.py" if fits.get("sft_peak") and fits.get("rl_peak") else "no"
        lines.append(f"| `{res['config'].split(':')[-1]}` | {s['param_count'] / 1e9:.2f} B "
                     f"| {mesh['data']}, {mesh['fsdp']}, {mesh['tensor']} | {res['remat']} "
                     f"| {gb(m['train_state'])} / {gb(s['train_state'])} | " + " | ".join(cells)
                     + (f" | {tg['hbm_gb']:.0f} | {verdict} |" if tg else f" | - | {verdict} |"))
    lines += ["", "| config | chip | SFT samples/s/chip | SFT tokens/s/chip | decode ms/step (bound) "
              "| RL completions/s/chip | without rollouts | with a bf16 sampling copy |", "|---|---|---|---|---|---|---|---|"]
    for res in results:
        if not res["target"]:
            continue
        t, tg = res["throughput"], res["target"]
        lines.append(f"| `{res['config'].split(':')[-1]}` | {tg['name']} ({tg['peak_tflops']:.0f} TFLOP/s) "
                     f"| {t['sft_samples_per_s_per_chip']:.1f} | {t['sft_tokens_per_s_per_chip']:,.0f} "
                     f"| {t['decode_step_ms']:.1f} ({t['decode_bound']}) | {t['rl_completions_per_s_per_chip']:.2f} "
                     f"| {t['rl_completions_per_s_per_chip_without_rollout']:.1f} "
                     f"| {t['rl_completions_per_s_per_chip_bf16_copy']:.2f} ({t['decode_step_ms_bf16_copy']:.1f} ms) |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", action="append", default=[], help="path[:arg]; repeatable")
    parser.add_argument("--from_json", default="", help="re-print the report of a saved run's output")
    parser.add_argument("--devices", type=int, default=8, help="simulated CPU devices (the mesh's size)")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"what to compile: {PARTS} ('' = none)")
    parser.add_argument("--vocab_size", type=int, default=0, help="policy vocabulary (0 = tokenizer.vocab_size)")
    parser.add_argument("--markdown", action="store_true", help="also print the docs/scaling.md tables")
    parser.add_argument("--llvm_opt", action="store_true",
                        help="optimise the CPU code too: the same memory figures (checked on :1b_v6e and the toy), "
                             "up to 3x the compile time")
    args = parser.parse_args(argv)
    if args.from_json:
        with open(args.from_json, encoding="utf-8") as f:
            last = [line for line in f if line.startswith("{")][-1]  # the JSON line of a run
        results = json.loads(last)["results"]
        for res in results:
            print_report(res)
        print("\n" + markdown(results))
        return
    if not args.config:
        parser.error("give --config (or --from_json)")
    parts = tuple(p for p in args.parts.split(",") if p)
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"unknown parts {unknown}; known: {PARTS}")
    if not args.llvm_opt:  # nothing here runs: skip LLVM's work (buffer assignment is unchanged)
        os.environ["XLA_FLAGS"] = " ".join(filter(None, [os.environ.get("XLA_FLAGS"), FAST_COMPILE]))
    import jax

    jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_num_cpu_devices", args.devices)  # before the backend starts
    if jax.device_count() != args.devices:
        sys.exit(f"asked for {args.devices} CPU devices, got {jax.device_count()}")
    results = []
    for spec in args.config:
        results.append(analyse(spec, parts, args.vocab_size or None, log=lambda s: print(s, flush=True)))
        print_report(results[-1])
    if args.markdown:
        print("\n" + markdown(results) + "\n")
    print(json.dumps({"devices": args.devices, "mfu": MFU, "results": results}, sort_keys=True))


if __name__ == "__main__":
    main()
