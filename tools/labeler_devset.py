"""The rule labeler on real chest X-ray text: the hand-labeled Open-I dev set and the MeSH tags.

    python tools/labeler_devset.py [--reports=PATH] [--errors]

``--reports``: ``NLMCXR_reports.tgz`` or the ``torchxrayvision`` 1.5.7 wheel that holds it
(``pip download --no-deps torchxrayvision==1.5.7 -d DIR``); default ``$RADFLOW_OPENI_REPORTS``,
else ``~/.cache/radflow_jax/openi/NLMCXR_reports.tgz``. Prints, for the dev set
(``tests/rewards/openi_devset.json``, labeled by hand under ``docs/labeling.md``; or
``--devset=tests/rewards/openi_heldout.json``, reports never looked at while writing the rules),
per-observation
precision/recall of positive mentions, positive-mention micro-F1 over the 13 findings, negation
and uncertain accuracy; then the agreement with Open-I's MeSH tags on every indexed report.
``--errors`` also lists each dev-set disagreement (report id, observation, hand vs labeler) with
the report's text, for working on the rules (the text is printed, never written to the repo).
Last, the carotid labeler on ``tests/rewards/carotid_handlabeled.json`` (reports written by hand):
micro-F1 over the per-side SRU bands, on the set and on its held-out part.

``--net=WORKDIR`` (a run whose ``labeler`` stage has finished, e.g. ``python -m radflow_jax.train
--config=configs/cxr.py --workdir=WORKDIR "--config.stages=('data','labeler')"``) adds the Flax
labeler: its agreement with the rule labeler on the Open-I texts the stage held out (the rule
labels are its training targets), per observation and micro-F1, and its reading of the dev set
against the hand labels beside the rule labeler's.
"""

from __future__ import annotations

import os
import sys
import time

from absl import app, flags

from radflow_jax.rewards import labeler, labeler_train, openi_devset
from radflow_jax.schema import LABEL_BLANK, get_schema

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_REPORTS = flags.DEFINE_string("reports", None, "NLMCXR_reports.tgz or the torchxrayvision 1.5.7 wheel.")
_DEVSET = flags.DEFINE_string("devset", os.path.join(_ROOT, "tests", "rewards", "openi_devset.json"),
                              "Hand labels (ids and labels only).")
_ERRORS = flags.DEFINE_bool("errors", False, "List every dev-set disagreement with its report text.")
_NET = flags.DEFINE_string("net", None, "Workdir of a trained Flax labeler: its agreement with the "
                           "rule labeler on held-out Open-I text and its dev-set scores.")
_CAROTID = flags.DEFINE_string("carotid", os.path.join(_ROOT, "tests", "rewards", "carotid_handlabeled.json"),
                               "Hand-written, hand-labeled carotid reports (text and labels).")
BANDS = tuple(f"{side} {band}" for side in ("Right", "Left") for band in
              ("Stenosis <50%", "Stenosis 50-69%", "Stenosis >=70%", "Near Occlusion", "Occlusion"))


def _value(v: int) -> str:
    return "." if v == LABEL_BLANK else str(int(v))


def _carotid() -> None:
    """The carotid labeler on the hand-written set: micro-F1 over the per-side SRU bands."""
    schema = get_schema("carotid")
    try:
        reports = openi_devset.load_handwritten(_CAROTID.value, schema)
    except ValueError as e:
        sys.exit(f"labeler_devset: {e}")
    print(f"\nCarotid: {_CAROTID.value} (hand-written; held-out = written after the rules)")
    print(f"{'subset':12s}{'reports':>8s}{'band micro-F1':>15s}{'precision':>10s}{'recall':>8s}{'neg acc':>9s}{'unc acc':>9s}")
    for name, held in (("set", False), ("held-out", True)):
        ids = [k for k, (_, _, h) in reports.items() if h == held]
        gold = openi_devset.gold_array({k: reports[k][1] for k in ids}, ids, schema)
        predicted = labeler.label_array([reports[k][0] for k in ids], schema)
        s = openi_devset.devset_scores(gold, predicted, schema, columns=BANDS)
        print(f"{name:12s}{len(ids):8d}{s['micro_f1']:15.3f}{s['micro_precision']:10.3f}{s['micro_recall']:8.3f}"
              f"{s['negation_accuracy']:9.3f}{s['uncertain_accuracy']:9.3f}")
        if _ERRORS.value:
            for i, rid in enumerate(ids):
                wrong = [(o, gold[i, k], predicted[i, k]) for k, o in enumerate(schema.observations)
                         if gold[i, k] != predicted[i, k]]
                if wrong:
                    print(f"  {rid}: " + ", ".join(f"{o} {_value(g)}->{_value(p)}" for o, g, p in wrong))


def _table(scores: dict, counts: str) -> None:
    print(f"{'observation':28s}{'precision':>10s}{'recall':>8s}{'f1':>7s}{'pos':>6s}{'neg':>6s}{'unc':>6s}  ({counts})")
    for obs, s in scores["per_observation"].items():
        print(f"{obs:28s}{s['precision']:10.3f}{s['recall']:8.3f}{s['f1']:7.3f}"
              f"{s['positive']:6d}{s['negative']:6d}{s['uncertain']:6d}")


def _summary(name: str, s: dict) -> None:
    print(f"{name:34s}{s['micro_f1']:10.3f}{s['micro_precision']:10.3f}{s['micro_recall']:8.3f}"
          f"{s['negation_accuracy']:9.3f}{s['uncertain_accuracy']:9.3f}{s['no_finding_accuracy']:9.3f}")


def _net(reports: dict, ids: list[str], gold, rule_predicted, schema) -> None:
    """The Flax labeler of ``--net``: against the rule labeler on its held-out Open-I texts, and
    against the hand labels on the dev set."""
    try:
        net, config, step = labeler_train.load_net_labeler(_NET.value)
    except (OSError, ValueError) as e:
        sys.exit(f"labeler_devset: --net={_NET.value}: {e}")
    c = config.labeler
    archive = os.path.expanduser(c.openi) if c.openi else ""
    print(f"\nFlax labeler: {_NET.value} (step {step}, size {c.size}, max_len {c.max_len}, "
          f"{net.tokenizer.vocab_size} words), trained on the rule labels of {labeler.CONVENTIONS}")
    if archive and os.path.isfile(archive):
        uid_texts = labeler_train.openi_texts(archive)  # the stage's archive and split
        train, held = labeler_train.split_openi(uid_texts, c.openi_holdout, config.seed)
        _, held_uids = labeler_train.split_openi([(u, [u]) for u, _ in uid_texts], c.openi_holdout, config.seed)
        seen = set(train)  # the synthetic training texts never equal Open-I text
        for name, texts in (("held-out", held), ("held-out, never verbatim in training", [t for t in held if t not in seen])):
            rule = labeler.label_array(texts, schema)
            start = time.perf_counter()
            predicted = net.label_array(texts, schema)
            seconds = time.perf_counter() - start
            s = openi_devset.devset_scores(rule, predicted, schema)
            accuracy = labeler_train.agreement(predicted, rule, schema)["accuracy"]
            print(f"\nAgainst the rule labeler on {len(texts)} Open-I texts ({name}; of {len(held_uids)} "
                  f"held-out reports: findings, impression, both; {seconds:.1f}s):")
            if name == "held-out":
                _table(s, "rule-label counts")
            print(f"positive-mention micro-F1 (13 findings): {s['micro_f1']:.3f} (precision "
                  f"{s['micro_precision']:.3f}, recall {s['micro_recall']:.3f}); negation agreement "
                  f"{s['negation_accuracy']:.3f}, uncertain agreement {s['uncertain_accuracy']:.3f}; "
                  f"4-class accuracy over all (text, observation) pairs {accuracy:.4f}")
        in_train = sum(i not in set(held_uids) for i in ids)
    else:
        print(f"(no Open-I archive at labeler.openi={c.openi!r}: no held-out agreement)")
        in_train = 0
    predicted = net.label_array([reports[i].report for i in ids], schema)
    s = openi_devset.devset_scores(gold, predicted, schema)
    print(f"\nDev set against the hand labels ({len(ids)} reports; {in_train} of them among the "
          f"net's training texts, with rule labels as targets):")
    _table(s, "hand counts")
    print(f"{'labeler':34s}{'micro-F1':>10s}{'precision':>10s}{'recall':>8s}{'neg acc':>9s}{'unc acc':>9s}{'NF acc':>9s}")
    _summary("rule", openi_devset.devset_scores(gold, rule_predicted, schema))
    _summary(f"Flax ({c.size})", s)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    schema = get_schema("cxr")
    path = openi_devset.find_reports(_REPORTS.value)
    if path is None:
        sys.exit(f"labeler_devset: no Open-I reports at {openi_devset.REPORTS_PATH}; pass --reports= or "
                 f"set ${openi_devset.REPORTS_ENV} (pip download --no-deps torchxrayvision==1.5.7)")
    try:
        reports = openi_devset.read_reports(path)
        gold_labels = openi_devset.load_devset(_DEVSET.value, schema)
    except ValueError as e:
        sys.exit(f"labeler_devset: {e}")
    missing = sorted(set(gold_labels) - set(reports))
    if missing:
        sys.exit(f"labeler_devset: {_DEVSET.value}: {len(missing)} ids not in {path}, e.g. {missing[:3]}")
    ids = sorted(gold_labels, key=lambda r: int(r[3:]))
    start = time.perf_counter()
    predicted = labeler.label_array([reports[i].report for i in ids], schema)
    gold = openi_devset.gold_array(gold_labels, ids, schema)
    scores = openi_devset.devset_scores(gold, predicted, schema)

    print(f"{os.path.basename(_DEVSET.value)}: {scores['reports']} Open-I reports labeled by hand "
          f"(docs/labeling.md); labeler {labeler.CONVENTIONS}; text from {path}")
    print(f"{'observation':28s}{'precision':>10s}{'recall':>8s}{'f1':>7s}{'pos':>6s}{'neg':>6s}{'unc':>6s}")
    for obs, s in scores["per_observation"].items():
        print(f"{obs:28s}{s['precision']:10.3f}{s['recall']:8.3f}{s['f1']:7.3f}"
              f"{s['positive']:6d}{s['negative']:6d}{s['uncertain']:6d}")
    print(f"positive-mention micro-F1 (13 findings): {scores['micro_f1']:.3f} "
          f"(precision {scores['micro_precision']:.3f}, recall {scores['micro_recall']:.3f})")
    print(f"negation accuracy:  {scores['negation_accuracy']:.3f} of {scores['negation_count']} gold negatives")
    print(f"uncertain accuracy: {scores['uncertain_accuracy']:.3f} of {scores['uncertain_count']} gold uncertain")
    print(f"No Finding accuracy: {scores['no_finding_accuracy']:.3f}")

    if _ERRORS.value:
        for i, rid in enumerate(ids):
            wrong = [(o, gold[i, k], predicted[i, k]) for k, o in enumerate(schema.observations)
                     if gold[i, k] != predicted[i, k]]
            if wrong:
                print(f"\n## {rid}: " + ", ".join(f"{o} {_value(g)}->{_value(p)}" for o, g, p in wrong))
                print(f"   F: {reports[rid].findings}\n   I: {reports[rid].impression}")

    indexed = [r for r in sorted(reports.values(), key=lambda r: int(r.id[3:]))
               if not any(t.startswith("No Indexing") for t in r.mesh)]
    every = labeler.label_array([r.report for r in indexed], schema)
    agreement = openi_devset.mesh_agreement(indexed, every, schema)
    print(f"\nMeSH agreement on {len(indexed)} indexed reports of {len(reports)} "
          f"(labeler present = 1 or -1; No Finding: 1 vs the 'normal' tag):")
    print(f"{'observation':28s}{'mesh':>6s}{'labeler':>9s}{'both':>6s}{'precision':>10s}{'recall':>8s}{'f1':>7s}")
    for obs, s in agreement.items():
        print(f"{obs:28s}{s['mesh']:6d}{s['labeler']:9d}{s['both']:6d}{s['precision']:10.3f}"
              f"{s['recall']:8.3f}{s['f1']:7.3f}")
    print(f"({time.perf_counter() - start:.1f}s to label {len(ids) + len(indexed)} reports)")
    if _NET.value:
        _net(reports, ids, gold, predicted, schema)
    _carotid()


if __name__ == "__main__":
    app.run(main)
