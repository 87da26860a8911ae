"""The dataset summary printed and saved after preparing real data: what was loaded and what not.

Counts per split, section coverage, label and tag prevalence, report lengths in tokens (with how
many exceed the target budget and will be truncated) and the skipped records by reason with the
first messages — so a user sees at once whether a dataset came through as expected.
"""

from __future__ import annotations

import collections
import json
import os
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from radflow_jax.data.formats import Record, SkipReport
from radflow_jax.data.sections import Sections, format_target
from radflow_jax.schema import POSITIVE, UNCERTAIN, Schema


def _labels(records: Sequence[Record], schema: Schema | None) -> dict:
    labeled = [r for r in records if r.labels is not None]
    out = {"labeled": len(labeled), "critical": sum(bool(r.critical) for r in labeled)}
    if labeled and schema is not None:
        arr = np.asarray([r.labels for r in labeled])
        out["positive"] = {o: int((arr[:, k] == POSITIVE).sum())
                           for k, o in enumerate(schema.observations)}
        out["uncertain"] = {o: int((arr[:, k] == UNCERTAIN).sum())
                            for k, o in enumerate(schema.observations)}
    return out


def summarize(
    splits: Mapping[str, Sequence[Record]],
    skips: SkipReport,
    *,
    schema: Schema | None = None,
    count_tokens: Callable[[str], int] | None = None,
    max_target_len: int | None = None,
    max_examples: int = 5,
    max_tags: int = 20,
) -> dict:
    """A JSON-able summary of loaded records and skips.

    ``count_tokens(target_text)`` (with ``max_target_len``, which counts the end token) adds
    length percentiles and the number of reports that will be truncated.
    """
    summary: dict = {"cases": {s: len(r) for s, r in splits.items()}}
    summary["images"] = {s: sum(len(x.image_paths) for x in r) for s, r in splits.items()}
    summary["sections"] = {
        s: {
            "findings": sum(bool(x.findings) for x in r),
            "impression": sum(bool(x.impression) for x in r),
            "both": sum(bool(x.findings and x.impression) for x in r),
        }
        for s, r in splits.items()
    }
    summary["labels"] = {s: _labels(r, schema) for s, r in splits.items()}
    tags = collections.Counter(t for r in splits.values() for x in r for t in set(x.tags))
    if tags:
        summary["tags"] = dict(tags.most_common(max_tags))
    if count_tokens is not None:
        summary["target_tokens"] = {}
        for s, r in splits.items():
            n = np.asarray([count_tokens(format_target(Sections(x.findings, x.impression))) + 1
                            for x in r] or [0])
            summary["target_tokens"][s] = {
                "p50": int(np.percentile(n, 50)), "p95": int(np.percentile(n, 95)),
                "max": int(n.max()),
                "truncated": int((n > max_target_len).sum()) if max_target_len else 0,
            }  # fmt: skip
    summary["skipped"] = {
        "total": len(skips),
        "by_reason": dict(skips.reasons.most_common()),
        "first": [message for _, message in skips.skipped[:max_examples]],
    }
    return summary


def format_summary(name: str, summary: dict) -> str:
    """A few human-readable lines of a ``summarize`` result."""
    lines = [f"{name}: cases {summary['cases']}, images {summary['images']}"]
    for split, cov in summary["sections"].items():
        n = max(summary["cases"][split], 1)
        lines.append(f"  {split}: findings {cov['findings'] / n:.1%}, impression "
                     f"{cov['impression'] / n:.1%}, both {cov['both'] / n:.1%}")
    for split, labels in summary["labels"].items():
        if labels["labeled"]:
            top = sorted(labels.get("positive", {}).items(), key=lambda kv: -kv[1])[:5]
            lines.append(f"  {split} labels: {labels['labeled']} labeled, {labels['critical']} "
                         f"critical; most positive: {dict(top)}")
    if summary.get("tags"):
        lines.append(f"  tags (weak labels): {dict(list(summary['tags'].items())[:5])}")
    for split, tok in summary.get("target_tokens", {}).items():
        lines.append(f"  {split} target tokens: p50 {tok['p50']}, p95 {tok['p95']}, max "
                     f"{tok['max']}, truncated {tok['truncated']}")
    skipped = summary["skipped"]
    lines.append(f"  skipped {skipped['total']}: {skipped['by_reason'] or 'none'}")
    lines += [f"    {m}" for m in skipped["first"]]
    return "\n".join(lines)


def write_summary(data_dir: str, name: str, summary: dict) -> str:
    """Writes ``summary`` under key ``name`` of ``data_dir/summary.json`` (other keys are kept,
    so several datasets can share one data_dir); returns the path."""
    path = os.path.join(data_dir, "summary.json")
    existing = {}
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            existing = json.load(f)
    existing[name] = summary
    os.makedirs(data_dir, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(existing, f, indent=1)
    return path
