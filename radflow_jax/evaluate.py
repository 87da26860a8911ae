"""Evaluation CLI.

    python -m radflow_jax.evaluate --workdir=DIR [--stage=rl]         # decode the eval split, score it
    python -m radflow_jax.evaluate --predictions=P.json --references=R.json [--output=O.json]

The second form scores any system's output in the R2Gen result format (``{id: [text]}``), so other
models can be compared on the same metrics: Bleu_1-4, METEOR, ROUGE_L, CIDEr, CE precision/recall/F1
(14 and 5 observations, micro/macro, example-based), consistency rate, critical-case sensitivity and
specificity, mean length; with ``--labels=labels.jsonl`` also the ``gt_`` metrics.

``--normalize`` chooses how text is normalised before pycocoevalcap scores it (stored as
``"normalize"`` in the output): ``r2gen_iu`` / ``r2gen_mimic`` are R2Gen's own report cleaners, as
MRG papers score; ``none`` scores the strings verbatim (for result files that are already cleaned,
as most published ones are); ``radflow`` is this project's variant. Default: ``r2gen_iu`` for
result files, the run's own setting for ``--workdir``.
"""

from __future__ import annotations

import json
import sys

from absl import app, flags
from flax import nnx

from radflow_jax.metrics import NORMALIZERS
from radflow_jax.parallel import distributed
from radflow_jax.schema import get_schema
from radflow_jax.scoring import evaluate_policy, score_files

_WORKDIR = flags.DEFINE_string("workdir", None, "Score a training run's checkpoint on its eval split.")
_STAGE = flags.DEFINE_enum("stage", None, ["sft", "rl"], "With --workdir: which checkpoint (default: newest).")
_PREDICTIONS = flags.DEFINE_string("predictions", None, "R2Gen result file {id: [text]} to score.")
_REFERENCES = flags.DEFINE_string("references", None, "R2Gen result file {id: [text]} of references.")
_LABELS = flags.DEFINE_string("labels", None, "Optional labels.jsonl with ground truth (gt_ metrics).")
_MODALITY = flags.DEFINE_enum("modality", "cxr", ["cxr", "carotid"], "Schema for file scoring.")
_OUTPUT = flags.DEFINE_string("output", None, "Where to write the metrics JSON (default: stdout).")
_NO_METEOR = flags.DEFINE_bool("no_meteor", False, "Skip METEOR (it needs Java).")
_NORMALIZE = flags.DEFINE_enum("normalize", None, list(NORMALIZERS),
                               "NLG text normaliser (default: r2gen_iu for files, the run's for --workdir).")
_FILES_NORMALIZE = "r2gen_iu"  # result files come in R2Gen's format, so R2Gen's cleaning


def main(argv: list[str]) -> None:
    """``python -m radflow_jax.evaluate --workdir=DIR [--stage=rl]`` or
    ``python -m radflow_jax.evaluate --predictions=P.json --references=R.json [--output=O.json]``."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if bool(_WORKDIR.value) == bool(_PREDICTIONS.value or _REFERENCES.value):
        raise app.UsageError("give either --workdir, or --predictions and --references")
    try:  # multi-host: every process decodes its rows, process 0 scores and writes
        distributed.initialize_from_flags()
    except distributed.DistributedError as e:
        sys.exit(f"distributed: {e}")
    meteor = not _NO_METEOR.value
    if _WORKDIR.value:
        from radflow_jax.data import prepare as prepare_lib
        from radflow_jax.inference import load_run

        config, _, run, state, stage, step = load_run(_WORKDIR.value, _STAGE.value)
        config.eval.meteor = config.eval.meteor and meteor
        data = prepare_lib.prepare_data(config, _WORKDIR.value)
        graphdef, params = nnx.split(run.train.policy(state))
        result = evaluate_policy(graphdef, params, data, config, _WORKDIR.value, stage=stage,
                                 step=step, runtime=run.runtime, normalize=_NORMALIZE.value)
    else:
        if not (_PREDICTIONS.value and _REFERENCES.value):
            raise app.UsageError("--predictions and --references go together")
        try:
            result = score_files(_PREDICTIONS.value, _REFERENCES.value, get_schema(_MODALITY.value),
                                 labels_path=_LABELS.value, meteor=meteor,
                                 normalize=_NORMALIZE.value or _FILES_NORMALIZE)
        except (ValueError, KeyError) as e:  # bad input files: one clear line, no traceback
            sys.exit(f"evaluate: {e}")
    text = json.dumps(result, indent=1)
    if _OUTPUT.value:
        with open(_OUTPUT.value, "w", encoding="utf-8") as f:
            f.write(text + "\n")
        print(f"wrote {_OUTPUT.value}")
    else:
        print(text)


if __name__ == "__main__":
    app.run(main)
