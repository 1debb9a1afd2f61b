"""msdetr_lite.runs: loss-key names, loss values and series, and reading a run folder."""
from __future__ import annotations

import json

import pytest
import torch

from msdetr_lite import runs
from msdetr_lite.config import LossConfig, MatcherConfig
from msdetr_lite.losses import SetCriterion
from msdetr_lite.runs import LossKey, load_run, loss_key, loss_value, parse_loss_key

from fake_runs import records as _records


def test_loss_key_round_trip():
    assert loss_key("giou", "o2m", 3) == "loss_giou_o2m_3"
    assert loss_key("cls", "enc") == "loss_cls_enc"
    for term in runs.LOSS_TERMS:
        for branch, layer in (("o2o", 0), ("o2m", 5), ("enc", None)):
            assert parse_loss_key(loss_key(term, branch, layer)) == LossKey(term, branch, layer)


@pytest.mark.parametrize("name", ["loss", "lr", "loss_cls_o2o", "loss_cls_enc_0", "loss_focal_o2o_0",
                                  "loss_cls_o2x_1", "loss_cls_o2o_-1", "xloss_cls_o2o_0"])
def test_parse_loss_key_rejects_other_names(name):
    assert parse_loss_key(name) is None


@pytest.mark.parametrize("args, match", [(("l1", "o2o", 0), "loss term"), (("cls", "aux", 0), "branch"),
                                         (("cls", "enc", 0), "no decoder layer"), (("cls", "o2o"), "layer index"),
                                         (("cls", "o2o", -1), "layer index")])
def test_loss_key_names_the_problem(args, match):
    with pytest.raises(ValueError, match=match):
        loss_key(*args)


@pytest.mark.parametrize("supervision", ["o2o", "ms", "hybrid", "group"])
def test_every_criterion_term_parses(supervision):
    """The names SetCriterion logs are exactly the ones loss_key writes."""
    C, Q, layers = 3, 6, 2
    gen = torch.Generator().manual_seed(0)

    def branch(n, classes=C):
        return {"logits": torch.randn(1, n, classes, generator=gen), "boxes": torch.rand(1, n, 4, generator=gen) * 0.5 + 0.1}

    n_o2m = {"o2o": Q, "ms": Q, "hybrid": 12, "group": 2 * Q}[supervision]
    outputs = {"o2o": [branch(Q) for _ in range(layers)], "o2m": [branch(n_o2m) for _ in range(layers)],
               "enc": branch(10, 1)}
    targets = [{"labels": torch.tensor([0, 2]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.3, 0.2]])}]
    losses = SetCriterion(C, LossConfig(), MatcherConfig(), supervision, num_queries=Q, group_num=3)(outputs, targets)
    parsed = {k: parse_loss_key(k) for k in losses if k != runs.TOTAL_KEY}
    assert None not in parsed.values()
    assert {loss_key(*key) for key in parsed.values()} == set(parsed)
    branches = {key.branch for key in parsed.values()}
    assert branches == ({"o2o", "enc"} if supervision == "o2o" else {"o2o", "o2m", "enc"})


def test_loss_value_selects_branch_term_and_layer():
    losses = _records()[0]["losses"]                       # step 1: o2o 1 + l, o2m 2 + l, enc 0.5 per term
    assert loss_value(losses) == 10.0
    assert loss_value(losses, "o2o", "cls", 0) == 1.0
    assert loss_value(losses, "o2o", "cls", -1) == 2.0      # last layer
    assert loss_value(losses, "o2o", "cls") == 3.0          # both layers
    assert loss_value(losses, "o2m", None, 1) == 9.0        # cls + bbox + giou of layer 1
    assert loss_value(losses, "enc", "giou") == 0.5
    assert loss_value(losses, "enc", "giou", -1) == 0.5     # the encoder has no layers
    assert loss_value(losses, "o2o", "cls", 7) is None
    assert loss_value(losses, "o2o", "cls", -3) is None
    assert loss_value(_records("o2o")[0]["losses"], "o2m") is None
    with pytest.raises(ValueError, match="branch"):
        loss_value(losses, "aux")
    with pytest.raises(ValueError, match="loss term"):
        loss_value(losses, "o2o", "l1")


def test_run_series_and_evals():
    run = runs.Run.from_records(_records(eval_every=2), name="ms")
    assert len(run.steps) == 12 and [r["epoch"] for r in run.epochs] == [1, 2, 3]
    xs, ys = run.loss("o2o", "cls", -1)
    assert xs == list(range(1, 13)) and ys[0] == pytest.approx(2.0) and ys[3] == pytest.approx(1 / 4 + 1)
    xe, ye = run.loss("o2m", "giou", 0, per="epoch")
    assert xe == [1, 2, 3] and ye[0] == pytest.approx(2 / 4)
    assert run.loss()[1][1] == pytest.approx(5.0)
    assert runs.Run.from_records(_records("o2o")).loss("o2m") == ([], [])
    assert run.step_epochs()[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert [e for e, _ in run.epoch_evals()] == [2]
    assert run.eval is None and run.final_eval()["final"]["AP"] == pytest.approx(0.2)
    with pytest.raises(ValueError, match="per="):
        run.loss("o2o", per="iter")


def test_load_run_folder(tmp_path):
    recs = _records()
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs) + "\n")
    (tmp_path / "config.json").write_text(json.dumps({"model": {"supervision": "ms"}}))
    run = load_run(tmp_path)
    assert run.name == tmp_path.name and run.dir == tmp_path and run.supervision == "ms"
    assert run.records == recs and run.eval is None
    (tmp_path / "eval.json").write_text(json.dumps({"final": {"AP": 0.5}, "layers": []}))
    assert load_run(tmp_path, name="x").final_eval()["final"]["AP"] == 0.5
    assert runs.as_run(tmp_path).records == recs and runs.as_run(recs, name="r").name == "r"
    assert runs.as_run(run) is run


def test_a_torn_last_line_is_skipped_and_reported(tmp_path):
    """A kill or a full disk during a write leaves the last line cut short: readers skip it with a
    warning; a bad line anywhere else is still an error naming it."""
    recs = _records()
    good = "".join(json.dumps(r) + "\n" for r in recs)
    for torn in ('{"type": "step", "epo', '{"type": "step", "epo\n\n'):
        (tmp_path / "metrics.jsonl").write_text(good + torn)
        with pytest.warns(runs.TornRecordWarning, match=r"metrics.jsonl:\d+: skipped a torn last line"):
            assert load_run(tmp_path).records == recs
    (tmp_path / "metrics.jsonl").write_text('{"type": "step", "epo\n' + good)
    with pytest.raises(runs.RunFileError, match=r"metrics.jsonl:1 is not a JSON record"):
        load_run(tmp_path)
    (tmp_path / "metrics.jsonl").write_text(good)
    (tmp_path / "eval.json").write_text('{"final": {"AP": "high"}}')
    with pytest.raises(runs.RunFileError, match=r"eval.json: 'final' must map metric names to numbers"):
        load_run(tmp_path)


def test_load_run_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
        load_run(tmp_path)
    (tmp_path / "metrics.jsonl").write_text('{"type": "resume"}\nnot json\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2"):
        load_run(tmp_path)
