"""The training engine: optimizer groups, schedule, checkpoints, resume, run-directory guards,
NaN stop, Ctrl-C, the epoch hook, SyncBatchNorm."""
from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from filelock import FileLock

from msdetr_lite import distributed, engine, optim, rundir
from msdetr_lite.checkpoint import (CheckpointError, load_checkpoint, load_model_from_checkpoint, remove_orphan_tmp,
                                    save_checkpoint)
from msdetr_lite.config import ConfigError, apply_overrides, preset


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
    assert optim.param_group_name("backbone.body.layer1.0.conv1.weight") == "backbone"
    assert optim.param_group_name("decoder.layers.0.cross_attn.sampling_offsets.weight") == "linear_proj"
    assert optim.param_group_name("reference_points.weight") == "linear_proj"
    assert optim.param_group_name("decoder.layers.0.cross_attn.value_proj.weight") == "default"


def test_build_optimizer_groups(micro_cfg):
    from msdetr_lite.models import build_model
    model = build_model(micro_cfg())
    tc = preset("tiny").train
    tc.lr, tc.lr_backbone, tc.lr_linear_proj_mult, tc.weight_decay = 1e-3, 1e-5, 0.1, 1e-4
    opt = optim.build_optimizer(model, tc)
    groups = {g["name"]: g for g in opt.param_groups}
    assert groups["default"]["lr"] == pytest.approx(1e-3)
    assert groups["backbone"]["lr"] == pytest.approx(1e-5)
    assert groups["linear_proj"]["lr"] == pytest.approx(1e-4)
    assert all(g["weight_decay"] == pytest.approx(1e-4) for g in opt.param_groups)
    by_id = {id(p): g["name"] for g in opt.param_groups for p in g["params"]}
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert len(by_id) == len(trainable) == sum(len(g["params"]) for g in opt.param_groups)
    for n, p in trainable:
        assert by_id[id(p)] == optim.param_group_name(n), n
    assert any("sampling_offsets" in n for n, _ in trainable)

    assert optim.apply_schedule(opt, tc, tc.lr_drop - 1)["default"] == pytest.approx(1e-3)
    lrs = optim.apply_schedule(opt, tc, tc.lr_drop)
    assert lrs == pytest.approx({"default": 1e-4, "backbone": 1e-6, "linear_proj": 1e-5})
    # the schedule follows the config it is given (what a resume with a changed lr relies on)
    tc.lr, tc.weight_decay = 5e-4, 0.0
    assert optim.apply_schedule(opt, tc, 0)["default"] == pytest.approx(5e-4)
    assert all(g["weight_decay"] == 0.0 for g in opt.param_groups)


def test_frozen_backbone_left_out(micro_cfg):
    from msdetr_lite.models import build_model
    model = build_model(micro_cfg(train_backbone=False))
    opt = optim.build_optimizer(model, preset("tiny").train)
    assert "backbone" not in {g["name"] for g in opt.param_groups}


# ---------------------------------------------------------------- checkpoints
def test_checkpoint_round_trip_weights_only(tmp_path, micro_cfg):
    from msdetr_lite.models import build_model
    model = build_model(micro_cfg())
    opt = optim.build_optimizer(model, preset("tiny").train)
    state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 1, "step": 7,
             "config": preset("tiny").to_dict(), "best_ap": 0.5}

    path = save_checkpoint(tmp_path / "checkpoint.pth", state)
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.pth"]          # no temporary left behind
    assert torch.load(path, weights_only=True)["step"] == 7             # plain tensors / containers
    loaded = load_checkpoint(path)
    for k, v in model.state_dict().items():
        assert torch.equal(loaded["model"][k], v), k
    model2 = build_model(micro_cfg())
    model2.load_state_dict(loaded["model"])
    opt.load_state_dict(loaded["optimizer"])
    assert loaded["config"]["model"]["supervision"] == "ms" and loaded["step"] == 7


def test_unreadable_checkpoint_is_a_clear_error(tmp_path):
    bad = tmp_path / "final.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="final.pth is not a readable checkpoint"):
        load_checkpoint(bad)
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pth")
    save_checkpoint(tmp_path / "weights.pth", {"w": torch.ones(2)})
    with pytest.raises(CheckpointError, match="has no model, config"):
        load_model_from_checkpoint(tmp_path / "weights.pth", device="cpu")


def test_orphan_temporaries_are_removed(tmp_path):
    keep = ["checkpoint.pth", ".hidden", "notes.tmp-1"]
    for name in keep + [".checkpoint.pth.tmp-123", ".final.pth.tmp-45"]:
        (tmp_path / name).write_bytes(b"x")
    removed = remove_orphan_tmp(tmp_path)
    assert sorted(p.name for p in removed) == [".checkpoint.pth.tmp-123", ".final.pth.tmp-45"]
    assert sorted(os.listdir(tmp_path)) == sorted(keep)


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


def test_a_failed_checkpoint_write_says_why(tmp_path, monkeypatch):
    """torch's writer hides errno ("unexpected pos ..."): the message says what the numbers show
    (a file-size limit, a full disk), and the previous checkpoint stays as it was."""
    import resource
    import shutil as shutil_module
    from types import SimpleNamespace
    path = save_checkpoint(tmp_path / "checkpoint.pth", {"epoch": 1})
    before = path.read_bytes()

    def torn(obj, f):
        f.write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    monkeypatch.setattr(torch, "save", torn)
    monkeypatch.setattr(resource, "getrlimit", lambda which: (10000, 10000))
    with pytest.raises(CheckpointError, match=r"checkpoint.pth: the file-size limit \(ulimit -f\) of 10000 bytes"):
        save_checkpoint(path, {"epoch": 2})
    monkeypatch.setattr(resource, "getrlimit", lambda which: (resource.RLIM_INFINITY,) * 2)
    monkeypatch.setattr(shutil_module, "disk_usage", lambda p: SimpleNamespace(total=100, used=100, free=0))
    with pytest.raises(CheckpointError, match=r"the disk is full .*previous checkpoint.pth, if any, is unchanged"):
        save_checkpoint(path, {"epoch": 2})
    assert path.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["checkpoint.pth"]


def test_non_finite_weights_are_refused_on_load(tmp_path, micro_cfg):
    from msdetr_lite.models import build_model
    model = build_model(micro_cfg())
    state = model.state_dict()
    next(v for v in state.values() if v.is_floating_point())[0] = float("inf")
    save_checkpoint(tmp_path / "final.pth", {"model": state, "config": preset("tiny").to_dict()})
    with pytest.raises(CheckpointError, match=r"final.pth holds non-finite weights \(NaN / inf in 1 tensor"):
        load_model_from_checkpoint(tmp_path / "final.pth", device="cpu")


# ---------------------------------------------------------------- training runs
def _records(run_dir, kind=None):
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if kind is None or r["type"] == kind]


def test_train_outputs_and_resume_equality(tmp_path, shapes_root):
    hook_calls = []
    straight = engine.train(micro_train_config(shapes_root, tmp_path / "a"), progress=False,
                            on_epoch_end=lambda epoch, summary: hook_calls.append((epoch, summary)))

    engine.train(micro_train_config(shapes_root, tmp_path / "b", "train.epochs=1"), progress=False)
    assert load_checkpoint(tmp_path / "b" / "checkpoint.pth")["epoch"] == 1
    shutil.copytree(tmp_path / "b", tmp_path / "c")                     # for the changed-lr resume below
    resumed = engine.train(micro_train_config(shapes_root, tmp_path / "b"), resume=True, progress=False)

    # the per-epoch reseed alone makes the resumed run equal the uninterrupted one, bit for bit
    a, b = _params(straight["model"]), _params(resumed["model"])
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resume"
    assert straight["steps"] == resumed["steps"] == 4

    # the epoch hook: once per epoch, after the checkpoint, with the epoch's mean losses
    assert [e for e, _ in hook_calls] == [1, 2]
    epochs_a = _records(tmp_path / "a", "epoch")
    for (e, summary), record in zip(hook_calls, epochs_a):
        assert summary["losses"] == record["losses"] and summary["eval"] == record["eval"]
        assert summary["checkpoint"] == str(tmp_path / "a" / "checkpoint.pth") and summary["step"] == 2 * e
    assert hook_calls[-1][1]["model"] is straight["model"]
    # mean losses accumulated on the device = mean of the logged steps (all logged: log_every=1)
    steps_a = _records(tmp_path / "a", "step")
    for record in epochs_a:
        mine = [r["losses"] for r in steps_a if r["epoch"] == record["epoch"]]
        for k, v in record["losses"].items():
            assert v == pytest.approx(sum(m[k] for m in mine) / len(mine), rel=1e-6), k

    # files of a run
    run = tmp_path / "b"
    for name in ("config.json", "metrics.jsonl", "checkpoint.pth", "final.pth", "eval.json"):
        assert (run / name).is_file(), name
    epochs = _records(run, "epoch")
    assert [r["epoch"] for r in epochs] == [1, 2]                      # resume kept epoch 1, added 2
    steps = _records(run, "step")
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    assert [r["changed"] for r in _records(run, "resume")] == [{"train.epochs": [1, 2]}]
    first = steps[0]
    assert {"loss", "loss_cls_o2o_1", "loss_bbox_o2m_0", "loss_giou_enc"} <= set(first["losses"])
    assert set(first["lr"]) == {"default", "backbone", "linear_proj"}
    assert first["step_time"] > 0 and first["peak_mem_mb"] > 0 and first["grad_norm"] > 0
    assert epochs[1]["lr"]["default"] == pytest.approx(0.1 * preset("tiny").train.lr)  # dropped 10x after lr_drop=1
    assert len(epochs[0]["eval"]["layers"]) == 2 and "AP50" in epochs[0]["eval"]["final"]
    ev = json.loads((run / "eval.json").read_text())
    assert len(ev["layers"]) == 2 and len(ev["epoch_times"]) == 2
    assert json.loads((run / "config.json").read_text())["model"]["num_classes"] == 4
    assert torch.load(run / "final.pth", weights_only=True)["epoch"] == 2
    assert "rng" not in load_checkpoint(run / "checkpoint.pth")
    model, cfg = load_model_from_checkpoint(run / "final.pth", device="cpu")
    assert cfg.model.num_classes == 4 and not model.training

    # resume with fewer epochs than the checkpoint completed: refused, naming the field
    with pytest.raises(rundir.RunDirError, match="train.epochs=1"):
        engine.train(micro_train_config(shapes_root, run, "train.epochs=1"), resume=True, progress=False)
    # a model field that differs from the checkpoint: refused, naming it
    with pytest.raises(rundir.RunDirError, match="model.num_queries"):
        engine.train(micro_train_config(shapes_root, run, "model.num_queries=10"), resume=True, progress=False)

    # resume with a changed schedule: applied from the next epoch and recorded
    new_lr = 2 * preset("tiny").train.lr
    engine.train(micro_train_config(shapes_root, tmp_path / "c", f"train.lr={new_lr}", "train.lr_drop=5"),
                 resume=True, progress=False)
    c = tmp_path / "c"
    (change,) = _records(c, "resume")
    assert change["epoch"] == 1 and change["changed"] == {"train.lr": [preset("tiny").train.lr, new_lr],
                                                          "train.lr_drop": [1, 5], "train.epochs": [1, 2]}
    assert _records(c, "epoch")[1]["lr"]["default"] == pytest.approx(new_lr)     # no drop before epoch 5
    assert [r["lr"]["linear_proj"] for r in _records(c, "step") if r["epoch"] == 2] == \
        pytest.approx([new_lr * 0.1] * 2)
    assert json.loads((c / "config.json").read_text())["train"]["lr"] == new_lr


# ---------------------------------------------------------------- the run directory
@pytest.mark.parametrize("files, extra", [
    ({"metrics.jsonl": b'{"type": "epoch", "epoch": 1}\n', "final.pth": b"the old weights"}, ()),
    # a folder holding only a run's results is a run too: they are not replaced silently
    ({"eval.json": b'{"final": {"AP": 0.5}}\n', "config.json": b"{}\n"}, ()),
    ({"epoch_2.pth": b"a snapshot"}, ("train.keep_snapshots=true",)),
])
def test_existing_run_is_never_overwritten_silently(tmp_path, shapes_root, files, extra):
    run = tmp_path / "run"
    run.mkdir()
    for name, data in files.items():
        (run / name).write_bytes(data)
    with pytest.raises(rundir.RunDirError) as err:
        engine.train(micro_train_config(shapes_root, run, *extra), progress=False)
    message = str(err.value)
    assert str(run) in message and "--resume" in message and "--overwrite" in message
    assert all(name in message for name in files)
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.name != rundir.LOCK} == files
    with pytest.raises(ConfigError, match="exclude each other"):
        engine.train(micro_train_config(shapes_root, run), resume=True, overwrite=True, progress=False)


def test_zero_epochs_is_refused():
    with pytest.raises(ConfigError, match=r"train.epochs=0: must be >= 1"):
        apply_overrides(preset("tiny"), ["train.epochs=0"])


def test_overwrite_replaces_the_run_and_clears_orphans(tmp_path, shapes_root):
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.pth").write_bytes(b"old")
    (run / "eval.json").write_text("{}")
    (run / ".checkpoint.pth.tmp-4242").write_bytes(b"half a checkpoint")   # a killed write
    summary = engine.train(micro_train_config(shapes_root, run, "train.epochs=1", "train.max_steps_per_epoch=1"),
                           overwrite=True, progress=False)
    assert load_checkpoint(run / "checkpoint.pth")["epoch"] == 1        # the old run's files are replaced
    assert not (run / ".checkpoint.pth.tmp-4242").exists()
    assert json.loads((run / "eval.json").read_text())["epoch"] == 1 and summary["steps"] == 1
    assert (run / "final.pth").is_file() and [r["epoch"] for r in _records(run, "epoch")] == [1]


def test_o2m_last_epoch_switches_the_o2m_branch_off(tmp_path, shapes_root):
    """loss.o2m_last_epoch=1: epoch 1 trains with o2m supervision, epoch 2 with o2o alone."""
    engine.train(micro_train_config(shapes_root, tmp_path / "run", "model.supervision=ms",
                                    "loss.o2m_last_epoch=1"), progress=False)
    epochs = _records(tmp_path / "run", "epoch")
    o2m = [{k: v for k, v in e["losses"].items() if "_o2m_" in k} for e in epochs]
    assert [e["epoch"] for e in epochs] == [1, 2] and o2m[0].keys() == o2m[1].keys() and o2m[0]
    assert all(v > 0 for v in o2m[0].values()) and all(v == 0 for v in o2m[1].values())
    with pytest.raises(ConfigError, match=r"loss.o2m_last_epoch=-1: must be >= 0"):
        apply_overrides(preset("tiny"), ["loss.o2m_last_epoch=-1"])


def test_second_training_into_the_same_dir_stops(tmp_path, shapes_root):
    run = tmp_path / "run"
    run.mkdir()
    held = FileLock(run / rundir.LOCK, blocking=False)
    with held:                                                         # "another process" trains there
        with pytest.raises(rundir.RunDirError, match="another training process is writing to") as err:
            engine.train(micro_train_config(shapes_root, run), progress=False)
        assert str(run) in str(err.value)
    assert sorted(os.listdir(run)) == [rundir.LOCK]                    # nothing written


def test_sync_batchnorm_only_under_ddp(micro_cfg):
    from msdetr_lite.models import build_model
    tc = preset("tiny").train
    tc.sync_bn = True
    two = distributed.DistInfo(rank=0, world_size=2)
    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")

    def count(m, cls):
        return sum(type(x) is cls for x in m.modules())

    model = build_model(micro_cfg(backbone_norm="bn"))
    n_bn = count(model, torch.nn.BatchNorm2d)
    assert n_bn > 0
    assert distributed.maybe_sync_batchnorm(model, tc, distributed.DistInfo(), cuda) is model   # one process
    converted = distributed.maybe_sync_batchnorm(model, tc, two, cuda)          # converting needs no GPU
    assert count(converted, torch.nn.SyncBatchNorm) == n_bn
    model = build_model(micro_cfg(backbone_norm="bn"))
    tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    on_cpu = distributed.maybe_sync_batchnorm(model, tc, two, cpu)
    assert count(on_cpu, distributed.CpuSyncBatchNorm2d) == n_bn and count(on_cpu, torch.nn.BatchNorm2d) == 0
    # the very same parameter and buffer tensors: an optimizer built before the conversion still sees them
    after = {**dict(on_cpu.named_parameters()), **dict(on_cpu.named_buffers())}
    assert after.keys() == tensors.keys() and all(after[k] is tensors[k] for k in tensors)
    frozen = build_model(micro_cfg(backbone_norm="frozen_bn"))
    assert distributed.maybe_sync_batchnorm(frozen, tc, two, cuda) is frozen     # nothing to synchronise
    tc.sync_bn = False
    model = build_model(micro_cfg(backbone_norm="bn"))
    assert distributed.maybe_sync_batchnorm(model, tc, two, cuda) is model


def test_cpu_sync_batchnorm_is_batchnorm_in_one_process():
    """Without a process group it is BatchNorm2d; with a 1-process gloo group (all-reduce = identity)
    its own code path gives BatchNorm2d's output, gradients and running statistics."""
    import socket
    torch.manual_seed(0)
    x = torch.randn(3, 4, 5, 6, requires_grad=True)
    ref = torch.nn.BatchNorm2d(4)
    with torch.no_grad():
        ref.weight.uniform_(0.5, 1.5), ref.bias.uniform_(-0.5, 0.5)
    mine = distributed._cpu_sync_batchnorm(torch.nn.Sequential(ref))[0]
    assert isinstance(mine, distributed.CpuSyncBatchNorm2d)
    ref = torch.nn.BatchNorm2d(4).train()
    ref.load_state_dict(mine.state_dict())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        y = mine(x)
        (g_mine,) = torch.autograd.grad((y * torch.arange(y.numel()).view_as(y)).sum(), x)
    finally:
        torch.distributed.destroy_process_group()
    y_ref = ref(x)
    (g_ref,) = torch.autograd.grad((y_ref * torch.arange(y.numel()).view_as(y)).sum(), x)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g_mine, g_ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(mine.running_var, ref.running_var)
    torch.testing.assert_close(mine.running_mean, ref.running_mean)


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
    with FileLock(tmp_path / "nan" / rundir.LOCK, blocking=False):     # released on the error
        pass


def test_nan_on_a_step_that_is_not_logged_still_stops(tmp_path, shapes_root, monkeypatch):
    cfg = micro_train_config(shapes_root, tmp_path / "nan", "train.eval_every=0", "train.log_every=100",
                             "train.max_steps_per_epoch=3", "train.epochs=1")
    _Trip(monkeypatch, at=2, action="nan")                     # iter 1 of 3: neither first nor last
    with pytest.raises(engine.NonFiniteLossError) as err:
        engine.train(cfg, progress=False)
    e = err.value
    assert e.epoch == 1 and e.step == 2 and "loss_cls_o2o_1" in e.terms
    assert "no checkpoint was written yet" in str(e)
    assert not (tmp_path / "nan" / "checkpoint.pth").exists()
    assert [r["step"] for r in _records(tmp_path / "nan", "step")] == [1]     # only iter 0 was read back


def test_keyboard_interrupt_keeps_checkpoint(tmp_path, shapes_root, monkeypatch, capsys):
    cfg = micro_train_config(shapes_root, tmp_path / "int", "train.eval_every=0")
    _Trip(monkeypatch, at=4, action="interrupt")
    with pytest.raises(KeyboardInterrupt):
        engine.train(cfg, progress=False)
    assert load_checkpoint(tmp_path / "int" / "checkpoint.pth")["epoch"] == 1
    captured = capsys.readouterr()
    assert "--resume" in captured.out + captured.err and "while training epoch 2" in captured.out + captured.err
    assert [p.name for p in (tmp_path / "int").iterdir() if ".tmp-" in p.name] == []


def _comparable(records):
    """Epoch records without what the clock and the process measure."""
    return [{k: v for k, v in r.items() if k not in ("epoch_time", "eval_time", "peak_mem_mb")} for r in records]


def test_interrupted_evaluation_loses_no_training(tmp_path, shapes_root, monkeypatch, capsys):
    """The checkpoint is written before the epoch's evaluation: Ctrl-C during it keeps the epoch's
    training, the message names the epoch being evaluated, and --resume evaluates and logs that
    epoch first, ending where an uninterrupted run ends."""
    straight = engine.train(micro_train_config(shapes_root, tmp_path / "a"), progress=False)
    evaluate = engine._evaluate
    calls = []

    def interrupted_second(run, progress):
        calls.append(run.epoch)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return evaluate(run, progress)

    monkeypatch.setattr(engine, "_evaluate", interrupted_second)
    with pytest.raises(KeyboardInterrupt):
        engine.train(micro_train_config(shapes_root, tmp_path / "b"), progress=False)
    monkeypatch.undo()
    captured = capsys.readouterr()
    assert "interrupted while evaluating epoch 2" in captured.out + captured.err
    assert load_checkpoint(tmp_path / "b" / "checkpoint.pth")["epoch"] == 2 and calls == [1, 2]
    assert [r["epoch"] for r in _records(tmp_path / "b", "epoch")] == [1]
    assert not (tmp_path / "b" / "final.pth").exists()

    resumed = engine.train(micro_train_config(shapes_root, tmp_path / "b"), resume=True, progress=False)
    a, b = _params(straight["model"]), _params(resumed["model"])
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _comparable(_records(tmp_path / "b", "epoch")) == _comparable(_records(tmp_path / "a", "epoch"))
    assert resumed["eval"] == straight["eval"] and resumed["best_epoch"] == straight["best_epoch"]
    assert json.loads((tmp_path / "b" / "eval.json").read_text())["final"] == straight["eval"]["final"]


def test_resume_of_a_finished_run_writes_nothing(tmp_path, shapes_root, capsys):
    run = tmp_path / "run"
    engine.train(micro_train_config(shapes_root, run, "train.epochs=1"), progress=False)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    summary = engine.train(micro_train_config(shapes_root, run, "train.epochs=1", "train.lr=1e-3"), resume=True,
                           progress=False)
    assert "nothing to do" in capsys.readouterr().out
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    assert summary["eval"]["final"] == json.loads(before["eval.json"])["final"]


def test_keep_metrics_before_drops_unfinished_epochs(tmp_path):
    path = tmp_path / "metrics.jsonl"
    records = [{"type": "step", "epoch": 1, "iter": 0, "step": 1}, {"type": "epoch", "epoch": 1, "step": 2},
               {"type": "resume", "epoch": 1, "step": 2, "changed": {"train.lr": [1e-4, 5e-5]}},
               {"type": "step", "epoch": 2, "iter": 0, "step": 3}]
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + "\n")
    rundir.keep_metrics_before(path, 1)
    assert [json.loads(line) for line in path.read_text().splitlines()] == records[:3]
    path.write_text('{"epoch": 1}\nnot json\n')                 # read through runs.read_metrics
    with pytest.raises(ValueError, match="metrics.jsonl:2 is not a JSON record"):
        rundir.keep_metrics_before(path, 1)


def test_keep_snapshots_writes_each_epochs_weights(tmp_path, shapes_root):
    """train.keep_snapshots: epoch_N.pth after every epoch holds that epoch's weights and the
    config (loadable as a model); the last equals final.pth; off by default, none are written."""
    from msdetr_lite.checkpoint import load_checkpoint, load_model_from_checkpoint
    run = tmp_path / "run"
    engine.train(micro_train_config(shapes_root, run, "train.keep_snapshots=true"), progress=False)
    snaps = sorted(p.name for p in run.glob("epoch_*.pth"))
    assert snaps == ["epoch_1.pth", "epoch_2.pth"]
    first, last = load_checkpoint(run / "epoch_1.pth"), load_checkpoint(run / "epoch_2.pth")
    final = load_checkpoint(run / "final.pth")
    assert first["epoch"] == 1 and last["epoch"] == 2
    assert all(torch.equal(last["model"][k], final["model"][k]) for k in final["model"])
    assert any(not torch.equal(first["model"][k], last["model"][k]) for k in final["model"])
    load_model_from_checkpoint(run / "epoch_1.pth", device="cpu")
    engine.train(micro_train_config(shapes_root, tmp_path / "plain"), progress=False)
    assert not list((tmp_path / "plain").glob("epoch_*.pth"))
