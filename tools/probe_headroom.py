"""How much clinical accuracy the frozen vision features carry, next to what SFT and RL write.

    python tools/probe_headroom.py --workdir=runs/cxr [--split=test]

Reads a finished main-job directory (its vision warm-up checkpoint, data and ``eval/*.json``),
scores the warm-up's linear head on the validation split and on ``--split``, and prints the
probe's CE micro-F1 against the ground-truth labels at threshold 0.5 and at per-observation
thresholds tuned on validation (``vision.tune_thresholds``), beside the generated reports'
``gt_ce14_micro_f1``. Why: with ``vision.freeze`` the RL stage can only re-decide what the frozen
features tell it; a probe well above the SFT decoder means headroom (e.g. calibration: stating
findings at lower confidence), a probe below it means RL has little clinical signal to add
(docs/rl_settings.md).
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
from absl import app, flags

from radflow_jax import config as config_lib
from radflow_jax import metrics
from radflow_jax.data import prepare
from radflow_jax.sft import vision

_WORKDIR = flags.DEFINE_string("workdir", None, "A main-job directory with a vision checkpoint.", required=True)
_SPLIT = flags.DEFINE_string("split", "test", "Split the probe and the reports are compared on.")


def main(argv: list[str]) -> None:
    del argv
    workdir = _WORKDIR.value
    config_path = os.path.join(workdir, "config.json")
    if not os.path.isfile(config_path):
        raise SystemExit(f"{config_path}: not found (run the main job with --workdir={workdir} first)")
    with open(config_path) as f:
        config = config_lib.from_saved(json.load(f))
    data = prepare.prepare_data(config, workdir)
    classifier = vision.load_classifier(config, workdir, data)
    if classifier is None:
        raise SystemExit(f"{workdir}/checkpoints/vision: no vision warm-up checkpoint to probe")
    logits_fn = jax.jit(lambda image, view_mask: classifier(image, view_mask))
    obs = data.schema.observations

    def probs(split: str) -> tuple[np.ndarray, np.ndarray]:
        logits, labels = vision.classifier_scores(logits_fn, data, config, split)
        return 1.0 / (1.0 + np.exp(-logits)), labels

    val_probs, val_labels = probs("val")
    test_probs, test_labels = probs(_SPLIT.value)
    thresholds = vision.tune_thresholds(val_probs, val_labels)
    rows = [("probe, threshold 0.5", test_probs > 0.5), ("probe, thresholds tuned on val", test_probs > thresholds)]
    print(f"{'':34s} gt_ce14_micro_f1 ({_SPLIT.value}, {len(test_labels)} cases)")
    for name, positive in rows:
        pred = np.where(positive, 1, 0).astype(np.int8)
        print(f"{name:34s} {metrics.ce_scores(pred, test_labels, obs, common5=None, prefix='gt_')['gt_ce14_micro_f1']:.3f}")
    for stage in ("sft", "rl"):
        path = os.path.join(workdir, "eval", f"{stage}.json")
        if os.path.isfile(path):
            with open(path) as f:
                print(f"{stage + ' reports (greedy)':34s} {json.load(f)['metrics']['gt_ce14_micro_f1']:.3f}")
    print("tuned thresholds: " + ", ".join(f"{o} {t:.2f}" for o, t in zip(obs, thresholds)))


if __name__ == "__main__":
    app.run(main)
