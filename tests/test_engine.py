"""The training engine: optimizer groups, checkpoints, resume, NaN stop, Ctrl-C."""
from __future__ import annotations

import json
import os
import random

import numpy as np
import pytest
import torch

from msdetr_lite import engine
from msdetr_lite.checkpoint import capture_rng, load_checkpoint, restore_rng, save_checkpoint
from msdetr_lite.config import apply_overrides, preset


def micro_train_config(data_root, output_dir, *extra):
    """The tiny preset shrunk to seconds per run on a CPU (2 steps of 2 images per epoch)."""
    return apply_overrides(preset("tiny"), [
        f"data.root={data_root}", "data.train_scales=(64,)", "data.val_size=64", "data.max_size=96",
        "data.num_workers=0", "model.num_encoder_layers=1", "model.num_decoder_layers=2",
        "model.d_model=32", "model.nheads=4", "model.n_points=2", "model.dim_feedforward=64",
        "model.num_queries=20", "model.hybrid_num_queries=30", "model.group_num=3",
        "model.deform_backend=torch", "train.batch_size=2", "train.max_steps_per_epoch=2",
        "train.epochs=2", "train.lr_drop=1", "train.log_every=1", "train.device=cpu",
        f"train.output_dir={output_dir}", *extra])


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory):
    from msdetr_lite.data.synthetic import generate
    root = tmp_path_factory.mktemp("shapes")
    generate(root, n_train=8, n_val=4, image_size=64, seed=0)
    return root


def _params(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ---------------------------------------------------------------- optimizer groups
def test_param_group_names():
    assert engine.param_group_name("backbone.body.layer1.0.conv1.weight") == "backbone"
    assert engine.param_group_name("decoder.layers.0.cross_attn.sampling_offsets.weight") == "linear_proj"
    assert engine.param_group_name("reference_points.weight") == "linear_proj"
    assert engine.param_group_name("decoder.layers.0.cross_attn.value_proj.weight") == "default"


def test_build_optimizer_groups(micro_cfg):
    from msdetr_lite.models import build_model
    model = build_model(micro_cfg())
    tc = preset("tiny").train
    tc.lr, tc.lr_backbone, tc.lr_linear_proj_mult, tc.weight_decay = 1e-3, 1e-5, 0.1, 1e-4
    opt = engine.build_optimizer(model, tc)
    groups = {g["name"]: g for g in opt.param_groups}
    assert groups["default"]["lr"] == pytest.approx(1e-3)
    assert groups["backbone"]["lr"] == pytest.approx(1e-5)
    assert groups["linear_proj"]["lr"] == pytest.approx(1e-4)
    assert all(g["weight_decay"] == pytest.approx(1e-4) for g in opt.param_groups)
    by_id = {id(p): g["name"] for g in opt.param_groups for p in g["params"]}
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert len(by_id) == len(trainable) == sum(len(g["params"]) for g in opt.param_groups)
    for n, p in trainable:
        assert by_id[id(p)] == engine.param_group_name(n), n
    assert any("sampling_offsets" in n for n, _ in trainable)

    sched = engine.build_lr_scheduler(opt, tc)
    tc_drop = tc.lr_drop
    for _ in range(tc_drop):
        opt.step()
        sched.step()
    assert {g["name"]: g["lr"] for g in opt.param_groups}["default"] == pytest.approx(1e-4)


def test_frozen_backbone_left_out(micro_cfg):
    from msdetr_lite.models import build_model
    model = build_model(micro_cfg(train_backbone=False))
    opt = engine.build_optimizer(model, preset("tiny").train)
    assert "backbone" not in {g["name"] for g in opt.param_groups}


# ---------------------------------------------------------------- checkpoints
def test_checkpoint_round_trip_weights_only(tmp_path, micro_cfg):
    from msdetr_lite.models import build_model
    model = build_model(micro_cfg())
    opt = engine.build_optimizer(model, preset("tiny").train)
    sched = engine.build_lr_scheduler(opt, preset("tiny").train)
    gen = torch.Generator().manual_seed(3)
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "lr_scheduler": sched.state_dict(),
             "epoch": 1, "step": 7, "rng": capture_rng({"g": gen}), "config": preset("tiny").to_dict(),
             "best_ap": 0.5}
    expected = (torch.rand(3), np.random.rand(3), random.random(), torch.rand(3, generator=gen))

    path = save_checkpoint(tmp_path / "checkpoint.pth", state)
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.pth"]          # no temporary left behind
    assert torch.load(path, weights_only=True)["step"] == 7             # plain tensors / containers
    loaded = load_checkpoint(path)
    for k, v in model.state_dict().items():
        assert torch.equal(loaded["model"][k], v), k
    model2 = build_model(micro_cfg())
    model2.load_state_dict(loaded["model"])
    opt.load_state_dict(loaded["optimizer"])
    sched.load_state_dict(loaded["lr_scheduler"])
    assert loaded["config"]["model"]["supervision"] == "ms" and loaded["step"] == 7

    torch.manual_seed(99), np.random.seed(99), random.seed(99)
    gen.manual_seed(99)
    restore_rng(loaded["rng"], {"g": gen})
    got = (torch.rand(3), np.random.rand(3), random.random(), torch.rand(3, generator=gen))
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1])
    assert got[2] == expected[2] and torch.equal(got[3], expected[3])


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "checkpoint.pth", {"epoch": 1, "w": torch.ones(3)})
    before = path.read_bytes()

    def broken_save(obj, f):
        f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"epoch": 2, "w": torch.zeros(3)})
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.pth"]


# ---------------------------------------------------------------- training runs
def test_train_outputs_and_resume_equality(tmp_path, shapes_root):
    straight = engine.train(micro_train_config(shapes_root, tmp_path / "a"), progress=False)

    engine.train(micro_train_config(shapes_root, tmp_path / "b", "train.epochs=1"), progress=False)
    assert load_checkpoint(tmp_path / "b" / "checkpoint.pth")["epoch"] == 1
    resumed = engine.train(micro_train_config(shapes_root, tmp_path / "b"), resume=True, progress=False)

    a, b = _params(straight["model"]), _params(resumed["model"])
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=f"{k} differs after resume")
    assert straight["steps"] == resumed["steps"] == 4

    # files of a run
    run = tmp_path / "b"
    for name in ("config.json", "metrics.jsonl", "checkpoint.pth", "final.pth", "eval.json"):
        assert (run / name).is_file(), name
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r["type"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2]                      # resume kept epoch 1, added 2
    steps = [r for r in records if r["type"] == "step"]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    first = steps[0]
    assert {"loss", "loss_cls_o2o_1", "loss_bbox_o2m_0", "loss_giou_enc"} <= set(first["losses"])
    assert set(first["lr"]) == {"default", "backbone", "linear_proj"}
    assert first["step_time"] > 0 and first["peak_mem_mb"] > 0
    assert epochs[1]["lr"]["default"] == pytest.approx(0.1 * preset("tiny").train.lr)  # dropped 10x after lr_drop=1
    assert len(epochs[0]["eval"]["layers"]) == 2 and "AP50" in epochs[0]["eval"]["final"]
    ev = json.loads((run / "eval.json").read_text())
    assert len(ev["layers"]) == 2 and len(ev["epoch_times"]) == 2
    assert json.loads((run / "config.json").read_text())["model"]["num_classes"] == 4
    assert torch.load(run / "final.pth", weights_only=True)["epoch"] == 2
    model, cfg = engine.load_model_from_checkpoint(run / "final.pth", device="cpu")
    assert cfg.model.num_classes == 4 and not model.training


class _Trip:
    """Wrap SetCriterion.forward: on call number `at`, either poison a loss or raise."""

    def __init__(self, monkeypatch, at: int, action: str):
        from msdetr_lite.losses import SetCriterion
        self.calls, original = 0, SetCriterion.forward

        def forward(crit, outputs, targets, *args, **kwargs):
            self.calls += 1
            losses = original(crit, outputs, targets, *args, **kwargs)
            if self.calls == at:
                if action == "nan":
                    losses["loss_cls_o2o_1"] = losses["loss_cls_o2o_1"] * float("nan")
                    losses["loss"] = losses["loss"] + losses["loss_cls_o2o_1"]
                else:
                    raise KeyboardInterrupt
            return losses

        monkeypatch.setattr(SetCriterion, "forward", forward)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, shapes_root, monkeypatch):
    cfg = micro_train_config(shapes_root, tmp_path / "nan", "train.eval_every=0")
    _Trip(monkeypatch, at=3, action="nan")                     # epoch 2, first step (global step 3)
    with pytest.raises(engine.NonFiniteLossError) as err:
        engine.train(cfg, progress=False)
    e = err.value
    assert e.epoch == 2 and e.step == 3 and list(e.terms) == ["loss", "loss_cls_o2o_1"]
    assert "loss_cls_o2o_1" in str(e) and "epoch 2" in str(e) and "--resume" in str(e)
    ckpt = load_checkpoint(tmp_path / "nan" / "checkpoint.pth")
    assert ckpt["epoch"] == 1 and ckpt["step"] == 2
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    assert not (tmp_path / "nan" / "final.pth").exists()


def test_keyboard_interrupt_keeps_checkpoint(tmp_path, shapes_root, monkeypatch, capsys):
    cfg = micro_train_config(shapes_root, tmp_path / "int", "train.eval_every=0")
    _Trip(monkeypatch, at=4, action="interrupt")
    with pytest.raises(KeyboardInterrupt):
        engine.train(cfg, progress=False)
    assert load_checkpoint(tmp_path / "int" / "checkpoint.pth")["epoch"] == 1
    captured = capsys.readouterr()
    assert "--resume" in captured.out + captured.err
    assert [p.name for p in (tmp_path / "int").iterdir() if p.name.startswith(".")] == []
