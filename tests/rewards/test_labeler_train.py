"""The labeler stage: corpus, batches, agreement numbers, NetLabeler batching, training and resume."""

import io
import json
import os
import shutil
import tarfile

import jax
import numpy as np
import pytest
from flax import nnx

from radflow_jax import config as config_lib
from radflow_jax.data import formats, prepare
from radflow_jax.data.sections import parse_sections
from radflow_jax.data.synthetic import cxr, cxr_report
from radflow_jax.data.tokenizer import ReportTokenizer, train_tokenizer
from radflow_jax.rewards import labeler as rule_labeler
from radflow_jax.rewards import labeler_train as lt
from radflow_jax.schema import LABEL_BLANK, get_schema
from radflow_jax.run_log import read_metrics

CXR = get_schema("cxr")


def _records(split: str, n: int, seed: int) -> list[formats.Record]:
    """Text-only synthetic chest X-ray records (no images: the labeler reads text alone)."""
    out = []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        text = cxr_report.write_report(cxr.sample_findings(rng), rng).text
        s = parse_sections(text)
        out.append(formats.Record(f"{split}{i}", split, (), text, s.findings, s.impression, None, None, ""))
    return out


def _data(n_train: int = 240, n_val: int = 40) -> prepare.PreparedData:
    splits = {"train": _records("train", n_train, 1), "val": _records("val", n_val, 2)}
    return prepare.PreparedData("", splits, None, CXR, formats.SkipReport(), {})


def _config(**labeler):
    config = config_lib.load_config_file("configs/cxr.py:quick")
    config.labeler = config_lib.base_config().labeler
    config.labeler.update(dict(openi="", max_len=128, size="tiny", num_steps=600, batch_size=16,
                               learning_rate=3e-3, warmup_steps=30, log_every=100, checkpoint_every=300,
                               eval_batch_size=64))
    config.labeler.update(labeler)
    lt.check_labeler_config(config.labeler)
    return config_lib.validate(config)


def test_record_texts_gives_sections_and_report_once():
    r = _records("train", 2, 0)
    texts = lt.record_texts(r + r)
    assert texts == list(dict.fromkeys([r[0].findings, r[0].impression, r[0].report,
                                        r[1].findings, r[1].impression, r[1].report]))


def test_openi_archive_parsing_and_split(tmp_path):
    xml = ('<eCitation><uId id="{uid}"/><MedlineCitation><Article><Abstract>'
           '<AbstractText Label="FINDINGS">{f}</AbstractText><AbstractText Label="IMPRESSION">{i}</AbstractText>'
           '</Abstract></Article></MedlineCitation></eCitation>')
    archive = tmp_path / "NLMCXR_reports.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        for uid, f, i in (("CXR2", "No effusion.", "Normal chest."), ("CXR1", "", "Small pneumothorax.")):
            data = xml.format(uid=uid, f=f, i=i).encode()
            info = tarfile.TarInfo(f"ecgen-radiology/{uid}.xml")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    reports = lt.openi_texts(str(archive))
    assert reports == [("CXR1", ["Small pneumothorax."]),
                       ("CXR2", ["No effusion.", "Normal chest.", "No effusion. Normal chest."])]
    train, held = lt.split_openi(reports, 0.5, seed=0)
    assert len(held) in (1, 3) and sorted(train + held) == sorted(t for _, ts in reports for t in ts)


def test_agreement_numbers_by_hand():
    ref = np.array([[1, 0], [-1, LABEL_BLANK]], np.int8)
    pred = np.array([[1, 1], [-1, LABEL_BLANK]], np.int8)
    schema = get_schema("cxr")
    report = lt.agreement(np.pad(pred, ((0, 0), (0, 12)), constant_values=LABEL_BLANK),
                          np.pad(ref, ((0, 0), (0, 12)), constant_values=LABEL_BLANK), schema)
    assert report["accuracy"] == pytest.approx(27 / 28)
    # positive: tp 1, 2 predicted, 1 true → 2/3; negative: 0 predicted, 1 true → 0; uncertain 1; blank 1
    assert report["class_f1"] == pytest.approx({"positive": 2 / 3, "negative": 0.0, "uncertain": 1.0, "blank": 1.0})
    assert report["macro_f1"] == pytest.approx((2 / 3 + 0 + 1 + 1) / 4)
    assert report["per_observation_accuracy"]["No Finding"] == 1.0
    assert report["per_observation_accuracy"]["Enlarged Cardiomediastinum"] == 0.5


def test_batches_are_a_pure_function_of_the_step():
    tok = train_tokenizer(lt.record_texts(_records("train", 40, 0)), vocab_size=300, min_frequency=1)
    corpus = lt.build_corpus(lt.record_texts(_records("train", 40, 0)), tok, CXR, max_len=128)
    a, b = lt.Batches(corpus, 8, seed=3), lt.Batches(corpus, 8, seed=3)
    for step in (0, 5, a.per_epoch + 2, 1):  # out of order, across an epoch boundary
        x, y = a(step), b(step)
        assert all(np.array_equal(x[k], y[k]) for k in x)
        assert x["tokens"].shape[1] in lt.buckets(128)
        assert x["mask"].sum(1).max() > x["tokens"].shape[1] // 2 or x["tokens"].shape[1] == lt.MIN_BUCKET
    epoch = a.plan(0).ravel()
    assert len(set(epoch.tolist())) == len(epoch) == a.per_epoch * 8  # each text at most once
    assert not np.array_equal(a.plan(0), a.plan(1))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("labeler"))
    config, data = _config(), _data()
    graphdef, params = lt.run_labeler(config, workdir, data)
    return config, data, workdir, graphdef, params


def test_short_training_agrees_with_the_rule_labeler_on_held_out_reports(trained):
    config, data, workdir, _, _ = trained
    with open(os.path.join(workdir, "labeler", "eval.json"), encoding="utf-8") as f:
        report = json.load(f)
    val = report["val"]
    ref = rule_labeler.label_array(lt.record_texts(data.splits["val"]), CXR)
    all_blank = float((ref == LABEL_BLANK).mean())  # what a constant "not mentioned" scores
    print(f"\nheld-out agreement {val['accuracy']:.4f} (all-blank {all_blank:.4f}), "
          f"macro-F1 {val['macro_f1']:.4f}, class F1 {val['class_f1']}")
    assert val["texts"] == len(ref)
    assert val["accuracy"] > 0.93 and val["accuracy"] > all_blank + 0.1
    assert val["macro_f1"] > 0.7
    assert report["speed"]["texts"] == 280 and report["speed"]["net_s"] > 0
    rows = read_metrics(workdir, "labeler")
    assert [r["step"] for r in rows] == [100, 200, 300, 400, 500, 600]
    assert rows[-1]["loss"] < 0.5 * rows[0]["loss"]


def test_net_labeler_batching_sorting_and_padding_change_nothing(trained):
    config, data, workdir, graphdef, params = trained
    tok = ReportTokenizer.load(os.path.join(workdir, "labeler", "tokenizer"))
    texts = lt.record_texts(data.splits["val"])[:20] + [""]
    net = lt.NetLabeler(graphdef, params, tok, CXR, max_len=128, batch_size=8)
    together = net.label_array(texts, CXR)
    assert together.shape == (21, len(CXR.observations)) and together.dtype == np.int8
    assert (together[-1] == LABEL_BLANK).all()
    order = np.random.default_rng(0).permutation(len(texts))
    np.testing.assert_array_equal(net.label_array([texts[i] for i in order]), together[order])
    one_by_one = lt.NetLabeler(graphdef, params, tok, CXR, max_len=128, batch_size=1)
    np.testing.assert_array_equal(np.concatenate([one_by_one.label_array([t]) for t in texts[:6]]), together[:6])
    with pytest.raises(ValueError, match="carotid"):
        net.label_array(texts, get_schema("carotid"))


def test_a_finished_run_is_restored_not_retrained(trained):
    config, data, workdir, graphdef, params = trained
    rows_before = len(read_metrics(workdir, "labeler"))
    net = lt.net_labeler(config, workdir, data)
    assert len(read_metrics(workdir, "labeler")) == rows_before  # no step was run again
    same = jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), nnx.state(nnx.merge(graphdef, params)),
                        nnx.state(nnx.merge(net.graphdef, net.params)))
    assert all(jax.tree.leaves(same))


def test_a_finished_run_loads_from_its_workdir_alone(trained, tmp_path):
    """``load_net_labeler`` (tools/labeler_devset.py --net) needs no data: config.json, the
    labeler's tokenizer and its newest checkpoint."""
    config, data, workdir, graphdef, params = trained
    with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
        f.write(config.to_json_best_effort(indent=1, sort_keys=True))  # as radflow_jax.train does
    net, loaded, step = lt.load_net_labeler(workdir)
    assert step == config.labeler.num_steps and loaded.labeler.max_len == config.labeler.max_len
    texts = lt.record_texts(data.splits["val"])[:12]
    same = lt.NetLabeler(graphdef, params, net.tokenizer, CXR, max_len=config.labeler.max_len, batch_size=8)
    np.testing.assert_array_equal(net.label_array(texts, CXR), same.label_array(texts, CXR))
    with pytest.raises(FileNotFoundError):
        lt.load_net_labeler(str(tmp_path))


def test_training_resumes_exactly_from_a_checkpoint(tmp_path):
    data = _data(60, 8)
    config = _config(num_steps=4, checkpoint_every=2, log_every=2, size="toy", max_len=16)  # one shape
    workdir = str(tmp_path)
    _, straight = lt.run_labeler(config, workdir, data)
    shutil.rmtree(os.path.join(workdir, "checkpoints", "labeler", "4"))  # as if stopped at step 2
    _, resumed = lt.run_labeler(config, workdir, data)
    assert [r["step"] for r in read_metrics(workdir, "labeler")] == [2, 4, 4]
    diffs = jax.tree.leaves(jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), straight, resumed))
    assert max(diffs) < 1e-6
