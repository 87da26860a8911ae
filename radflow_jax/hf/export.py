"""Writes a trained policy as a ``transformers`` Llava folder (SigLIP tower + Llama text model).

The folder loads with ``AutoModelForImageTextToText.from_pretrained`` and ``AutoProcessor``:
``config.json``, ``model.safetensors`` (or shards plus ``model.safetensors.index.json``),
``generation_config.json`` (greedy, our eos/pad), the tokenizer, a processor whose image processor
reproduces our input pipeline and whose ``<image>`` expands to the patch count, and a model card.

Choices that make HF compute exactly what we compute:
- ``vision_feature_layer=-1`` with ``tie_last_hidden_states=True`` on the SigLIP config, so the
  features are the tower's ``post_layernorm`` output as in our ViT (SigLIP's default feeds Llava
  the pre-norm states); ``vision_feature_select_strategy="full"`` keeps every patch.
- Grayscale: a 1-channel tower (``num_channels=1``) and an image processor with
  ``do_convert_rgb=False``, mean = std = 0.5 and bilinear resizing: our ``2p - 1`` pixels. Callers
  pass grayscale images (PIL mode ``L``); no kernel is rescaled, so round trips are bit-identical.
- With ``attention_bias`` HF Llama also has an o_proj bias: written as zeros.

Multi-host: every process joins the gather (``process_allgather`` of non-addressable shards);
process 0 alone writes files.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

import jax
import ml_dtypes
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from safetensors.numpy import save_file

from radflow_jax.data.tokenizer import ReportTokenizer
from radflow_jax.hf import convert
from radflow_jax.inference import load_run
from radflow_jax.models.policy import PolicyConfig

EXPORT_DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16}
MAX_SHARD_BYTES = 5_000_000_000  # HF's classic default shard size
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
PROVENANCE_NAME = "radflow_export.json"


def host_params(params: nnx.State) -> dict[str, np.ndarray]:
    """Flat ``{dotted path: full numpy array}`` of a (possibly sharded, multi-host) param state.

    Every process must call this (collectives run in the same, sorted order everywhere).
    """
    flat = convert.flatten(nnx.to_pure_dict(params))
    out = {}
    for key in sorted(flat):
        x = flat[key]
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            x = multihost_utils.process_allgather(x, tiled=True)
        out[key] = np.asarray(jax.device_get(x))
    return out


def save_safetensors(
    tensors: Mapping[str, np.ndarray], out_dir: str, max_shard_bytes: int = MAX_SHARD_BYTES
) -> list[str]:
    """``model.safetensors``, or numbered shards plus an index past ``max_shard_bytes``; file names."""
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for key in sorted(tensors):
        nbytes = tensors[key].nbytes
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = tensors[key]
        size += nbytes
    if len(shards) == 1:
        names = [WEIGHTS_NAME]
    else:
        names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
        weight_map = {key: name for name, shard in zip(names, shards) for key in shard}
        total = sum(t.nbytes for t in tensors.values())
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        _write_json(os.path.join(out_dir, INDEX_NAME), index)
    for name, shard in zip(names, shards):
        path = os.path.join(out_dir, name)
        save_file(shard, path, metadata={"format": "pt"})  # transformers wants the format tag
        os.chmod(path, 0o644)  # safetensors creates files readable by the owner only
    return names


def llava_config(cfg: PolicyConfig, tokenizer: ReportTokenizer, dtype: str):
    """The ``LlavaConfig`` of a policy (keyword arguments only, as ``LlavaConfig`` requires)."""
    from transformers import LlamaConfig, LlavaConfig, SiglipVisionConfig

    v, t = cfg.vision, cfg.text
    vision = SiglipVisionConfig(
        hidden_size=v.hidden, intermediate_size=v.mlp, num_hidden_layers=v.layers,
        num_attention_heads=v.heads, num_channels=v.channels, image_size=v.image_size,
        patch_size=v.patch_size, hidden_act="gelu_pytorch_tanh", layer_norm_eps=v.layer_norm_eps,
        vision_use_head=False, tie_last_hidden_states=True,
    )
    ids = dict(bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id, pad_token_id=tokenizer.pad_id)
    text = LlamaConfig(
        vocab_size=t.vocab_size, hidden_size=t.hidden, intermediate_size=t.mlp,
        num_hidden_layers=t.layers, num_attention_heads=t.heads, num_key_value_heads=t.kv_heads,
        head_dim=t.head_dim, hidden_act="silu", max_position_embeddings=t.max_seq_len,
        rms_norm_eps=t.rms_eps, rope_theta=t.rope_theta, attention_bias=t.attention_bias,
        mlp_bias=False, tie_word_embeddings=False, **ids,
    )
    config = LlavaConfig(
        vision_config=vision, text_config=text, image_token_index=tokenizer.image_id,
        image_seq_length=v.num_patches, projector_hidden_act="gelu",
        vision_feature_select_strategy="full", vision_feature_layer=-1,
        multimodal_projector_bias=True, tie_word_embeddings=False,
    )
    config.architectures = ["LlavaForConditionalGeneration"]
    config.dtype = dtype
    return config


def llava_processor(cfg: PolicyConfig, tokenizer_dir: str):
    """Processor = our tokenizer (left padding) + a grayscale SigLIP image processor."""
    from transformers import AutoTokenizer, LlavaProcessor
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    # Left padding (saved in tokenizer_config.json): batched prompts end where generation starts.
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, padding_side="left")
    size = cfg.vision.image_size
    image_processor = SiglipImageProcessorPil(
        size={"height": size, "width": size}, resample=2,  # PIL bilinear, as our pipeline
        do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
        image_mean=[0.5], image_std=[0.5], do_convert_rgb=False,
    )
    return LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=cfg.vision.patch_size,
        vision_feature_select_strategy="full", num_additional_image_tokens=0, image_token="<image>",
    )


def hf_prompt(tokenizer: ReportTokenizer, prompt: str, num_views: int) -> str:
    """The text a ``transformers`` user passes: one ``<image>`` per view, then ``<bos>`` and the prompt."""
    image, bos = tokenizer.id_to_token(tokenizer.image_id), tokenizer.id_to_token(tokenizer.bos_id)
    return image * num_views + bos + prompt


def model_card(provenance: Mapping, metrics: Mapping[str, float] | None) -> str:
    """README.md: what the model is, how it was trained and scored, how to use it, what not to do."""
    p = provenance
    lines = [
        "---",
        "library_name: transformers",
        "pipeline_tag: image-text-to-text",
        "tags: [radiology, report-generation, radflow-jax, research-only]",
        "---",
        f"# RadFlow-JAX {p['modality']} report generator ({p['stage']}, step {p['step']})",
        "",
        "**Research use only. Not a medical device; not for clinical use or diagnosis.** Outputs can",
        "be wrong, incomplete or unsafe; never use them to make decisions about patients.",
        "",
        "## Model",
        f"Llava layout: SigLIP-style ViT ({p['vision']}) -> MLP projector -> Llama-style decoder "
        f"({p['text']}), {p['num_params']:,} parameters, exported from RadFlow-JAX in {p['dtype']}.",
        f"Input: {p['max_views']} grayscale view(s) of {p['image_size']}x{p['image_size']} (PIL mode `L`).",
        "",
        "## Training",
        f"- Data: {p['data']}.",
        f"- Stages: {p['stages']}; exported checkpoint: `{p['stage']}` step {p['step']}.",
        "- Target format: `<findings> ... <impression> ...` ending in `<eos>`.",
        "",
        "## Evaluation",
    ]
    if metrics:
        lines += ["| metric | value |", "| --- | --- |"]
        lines += [f"| {k} | {v:.4f} |" for k, v in metrics.items()]
    else:
        lines.append("No evaluation of this checkpoint was found in the run folder.")
    lines += [
        "",
        "## Usage",
        "```python",
        *usage_snippet(".", p["hf_prompt"]).splitlines(),
        "```",
        "Greedy decoding reproduces `python -m radflow_jax.generate` token for token (fp32). The",
        "report's sections are marked by the special tokens `<findings>` and `<impression>`: decode",
        "with `skip_special_tokens=False` to keep them.",
        "",
    ]
    return "\n".join(lines)


def usage_snippet(model_dir: str, prompt: str, image_path: str = "image.png") -> str:
    """The six lines that generate a report from an exported folder (README and tests run them)."""
    return "\n".join([
        "from PIL import Image",
        "from transformers import AutoModelForImageTextToText, AutoProcessor",
        f"model = AutoModelForImageTextToText.from_pretrained({model_dir!r})",
        f"processor = AutoProcessor.from_pretrained({model_dir!r})",
        f"inputs = processor(images=Image.open({image_path!r}).convert('L'), text={prompt!r}, return_tensors='pt')",
        "print(processor.decode(model.generate(**inputs)[0, inputs['input_ids'].shape[1]:], skip_special_tokens=True))",
    ])


def export_policy(
    params: Mapping[str, np.ndarray],
    cfg: PolicyConfig,
    tokenizer_dir: str,
    out_dir: str,
    *,
    provenance: Mapping,
    metrics: Mapping[str, float] | None = None,
    dtype: str = "float32",
    max_new_tokens: int = 256,
    max_shard_bytes: int = MAX_SHARD_BYTES,
) -> None:
    """Writes the HF folder for host ``params`` (flat, as from ``host_params``); process 0 only."""
    from transformers import GenerationConfig

    if dtype not in EXPORT_DTYPES:
        raise ValueError(f"dtype must be one of {tuple(EXPORT_DTYPES)}, got {dtype!r}")
    if jax.process_index() != 0:
        return
    tokenizer = ReportTokenizer.load(tokenizer_dir)
    tensors = {k: v.astype(EXPORT_DTYPES[dtype]) for k, v in convert.to_hf(params, cfg).items()}
    os.makedirs(out_dir, exist_ok=True)
    for stale in os.listdir(out_dir):  # a previous export's shards must not linger in the index
        if stale.endswith(".safetensors") or stale == INDEX_NAME:
            os.remove(os.path.join(out_dir, stale))
    save_safetensors(tensors, out_dir, max_shard_bytes)
    llava_config(cfg, tokenizer, dtype).save_pretrained(out_dir)
    GenerationConfig(
        do_sample=False, max_new_tokens=max_new_tokens, bos_token_id=tokenizer.bos_id,
        eos_token_id=tokenizer.eos_id, pad_token_id=tokenizer.pad_id,
    ).save_pretrained(out_dir)
    llava_processor(cfg, tokenizer_dir).save_pretrained(out_dir)
    full = {
        **provenance,
        "dtype": dtype,
        "num_params": int(sum(v.size for v in params.values())),
        "vision": f"{cfg.vision.layers} layers, width {cfg.vision.hidden}, patch {cfg.vision.patch_size}",
        "text": f"{cfg.text.layers} layers, width {cfg.text.hidden}, vocabulary {cfg.text.vocab_size}",
        "image_size": cfg.vision.image_size,
    }
    _write_json(os.path.join(out_dir, PROVENANCE_NAME), full)
    with open(os.path.join(out_dir, "README.md"), "w", encoding="utf-8") as f:
        f.write(model_card(full, metrics))


def _eval_metrics(workdir: str, stage: str, step: int) -> dict[str, float] | None:
    """Headline metrics of ``eval/<stage>.json`` if it scored this very step."""
    path = os.path.join(workdir, "eval", f"{stage}.json")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        result = json.load(f)
    if result.get("step") != step:
        return None
    keys = ("Bleu_4", "METEOR", "ROUGE_L", "CIDEr", "ce14_micro_f1", "gt_ce14_micro_f1",
            "gt_ce14_macro_f1", "gt_critical_sensitivity")
    found = result.get("metrics", {})
    return {k: float(found[k]) for k in keys if isinstance(found.get(k), (int, float))}


def export_run(
    workdir: str,
    out_dir: str,
    *,
    stage: str | None = None,
    step: int | None = None,
    dtype: str = "float32",
    max_shard_bytes: int = MAX_SHARD_BYTES,
) -> tuple[str, int]:
    """Exports a training workdir's checkpoint (latest of ``stage``, or ``step``); (stage, step)."""
    config, tokenizer, run, state, stage, step = load_run(workdir, stage, step)
    params = host_params(nnx.state(run.train.policy(state), nnx.Param))
    d = config.data
    stages = [s for s in ("sft", "rl") if os.path.isdir(os.path.join(workdir, "checkpoints", s))]
    if d.source == "synthetic":
        data = f"procedurally generated synthetic {config.modality} studies ({d.num_train} training cases)"
    else:
        data = f"{d.source}-format {config.modality} dataset at {d.dir}"
    provenance = {
        "modality": config.modality, "stage": stage, "step": int(step), "stages": stages,
        "data": data, "prompt": d.prompt, "max_views": d.max_views,
        "hf_prompt": hf_prompt(tokenizer, d.prompt, d.max_views),
    }
    export_policy(
        params, run.train.model_config, os.path.join(workdir, "tokenizer"), out_dir,
        provenance=provenance, metrics=_eval_metrics(workdir, stage, int(step)), dtype=dtype,
        max_new_tokens=config.eval.max_new_tokens or d.max_target_len, max_shard_bytes=max_shard_bytes,
    )
    return stage, int(step)


def _write_json(path: str, content: Mapping) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(content, f, indent=2, sort_keys=True)
        f.write("\n")
