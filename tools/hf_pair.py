"""One policy on both sides of a benchmark: our parameters, and the same weights loaded by
``transformers`` from a ``radflow_jax.hf.export`` folder, with matched inputs.

Shared by ``bench_rollout.py`` and ``bench_step.py`` so that both compare like with like: the
same tokenizer (trained on generated reports), images, prompt and weights.
"""

from __future__ import annotations

import os

import numpy as np
from flax import nnx
from PIL import Image

from radflow_jax.data import pipeline
from radflow_jax.data.synthetic import generate_case
from radflow_jax.data.tokenizer import ReportTokenizer, train_tokenizer
from radflow_jax.hf import export
from radflow_jax.models.policy import PolicyConfig

VOCAB, IMAGE, PROMPT_LEN = 4000, 128, 8
PROMPT = "chest x-ray frontal view"


def tokenizer(workdir: str) -> ReportTokenizer:
    """A word-level tokenizer of ``VOCAB`` entries trained on 200 generated reports, saved under
    ``workdir/tokenizer`` (the export copies it from there)."""
    reports = [generate_case("cxr", 0, i).report for i in range(200)]
    tok = train_tokenizer(reports, vocab_size=VOCAB)
    tok.save(os.path.join(workdir, "tokenizer"))
    return tok


def prefix_inputs(tok: ReportTokenizer, prompts: int) -> tuple[dict[str, np.ndarray], list[Image.Image]]:
    """Our prefix batch and the PIL images HF's processor takes, for ``prompts`` generated cases."""
    cases = [generate_case("cxr", 0, i, image_size=IMAGE) for i in range(prompts)]
    pixels = np.stack([c.images[0] for c in cases])
    prompt = pipeline.prompt_tokens(tok, PROMPT, PROMPT_LEN)
    ours = {
        "image": (pixels.astype(np.float32) / 255.0 * 2.0 - 1.0)[:, None, :, :, None],
        "view_mask": np.ones((prompts, 1), bool),
        "prompt_tokens": np.tile(prompt, (prompts, 1)),
        "prompt_mask": np.tile(prompt != tok.pad_id, (prompts, 1)),
    }
    return ours, [Image.fromarray(p) for p in pixels]


def export_to_hf(params: nnx.State, cfg: PolicyConfig, workdir: str, name: str, max_new_tokens: int) -> str:
    """``params`` exported with ``radflow_jax.hf.export`` to ``workdir/name``; returns the folder."""
    out_dir = os.path.join(workdir, name)
    tok = ReportTokenizer.load(os.path.join(workdir, "tokenizer"))
    provenance = dict(modality="cxr", stage="random init (bench)", step=0, stages=[], data="none",
                      max_views=1, hf_prompt=export.hf_prompt(tok, PROMPT, 1))
    export.export_policy(export.host_params(params), cfg, os.path.join(workdir, "tokenizer"), out_dir,
                         provenance=provenance, max_new_tokens=max_new_tokens)
    return out_dir


def load_hf(out_dir: str):
    """An exported folder → (``LlavaForConditionalGeneration``, ``LlavaProcessor``)."""
    from transformers import LlavaForConditionalGeneration, LlavaProcessor

    return LlavaForConditionalGeneration.from_pretrained(out_dir), LlavaProcessor.from_pretrained(out_dir)


def hf_prefix(processor, tok: ReportTokenizer, images: list[Image.Image]) -> dict:
    """HF's inputs for the same prefix: ``input_ids`` (image tokens expanded), mask, pixels."""
    return processor(images=images, text=[export.hf_prompt(tok, PROMPT, 1)] * len(images),
                     return_tensors="pt", padding=True)
