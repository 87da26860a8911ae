"""Renders the README's sample gallery: three cases per modality with their reports.

    python tools/make_samples.py [--out=docs/samples] [--seed=0] [--image_size=256]

Writes ``<out>/<modality>_<k>.png`` (carotid: right and left duplex side by side) and prints the
Markdown table that the README embeds, so the gallery can be regenerated after generator changes.
"""

from __future__ import annotations

import os

import numpy as np
from absl import app, flags
from PIL import Image

from radflow_jax.data.synthetic import generate_case

_OUT = flags.DEFINE_string("out", "docs/samples", "Output folder.")
_SEED = flags.DEFINE_integer("seed", 0, "Dataset seed.")
_SIZE = flags.DEFINE_integer("image_size", 256, "Rendered side in pixels.")
_INDICES = flags.DEFINE_list("indices", None, "modality:index pairs to show (default: first three "
                             "cases that differ in finding count).")


def _pick(modality: str, seed: int, size: int, want: int = 3) -> list[int]:
    """A normal case, a critical one and one with several findings, so the gallery shows range."""
    chosen: dict[str, int] = {}
    for i in range(200):
        case = generate_case(modality, seed, i, size)
        positives = sum(v == 1 for k, v in case.labels.items() if k != "No Finding")
        key = "critical" if case.critical else ("normal" if case.labels["No Finding"] == 1 else
                                                "several" if positives >= 2 else "")
        if key and key not in chosen:
            chosen[key] = i
        if len(chosen) == want:
            break
    return [chosen[k] for k in ("normal", "critical", "several") if k in chosen]


def main(argv: list[str]) -> None:
    del argv
    os.makedirs(_OUT.value, exist_ok=True)
    rows = ["| image | report |", "| --- | --- |"]
    picks = {m: _pick(m, _SEED.value, _SIZE.value) for m in ("cxr", "carotid")}
    if _INDICES.value:
        picks = {m: [int(p.split(":")[1]) for p in _INDICES.value if p.startswith(m + ":")]
                 for m in picks}
    for modality, indices in picks.items():
        for k, index in enumerate(indices):
            case = generate_case(modality, _SEED.value, index, _SIZE.value)
            image = np.concatenate(case.images, axis=1)
            name = f"{modality}_{k}.png"
            Image.fromarray(image, mode="L").save(os.path.join(_OUT.value, name), optimize=True)
            report = case.report.replace("\n\n", "<br><br>").replace("\n", " ")
            views = " + ".join(case.views)
            rows.append(f"| ![{modality} {views}]({_OUT.value}/{name}) | {report} |")
    print("\n".join(rows))


if __name__ == "__main__":
    app.run(main)
