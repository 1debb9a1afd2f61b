"""Data-parallel training on CPU: 2 processes (gloo), the engine's own torch.distributed path.

Two checks in one run of 2 epochs x 2 steps with MS-DETR supervision and per-epoch evaluation:
  * the ranks stay in sync: identical parameters on both ranks at the end;
  * the batch semantics are right: 2 processes x 1 image follow the trajectory of 1 process x 2
    images (train.batch_size is the total batch; the sampler shards it; the losses are
    normalised by the GT count averaged over ranks and DDP averages the gradients).
For the second check every source of per-rank randomness is switched off: deterministic
transforms (the val pipeline), frozen BatchNorm (batch statistics differ per rank), no random
subset in the one-to-many matcher, and square images (no padding differences).
"""
from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from msdetr_lite import engine
from msdetr_lite.config import Config, apply_overrides, preset

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")


def _config(data_root, output_dir) -> Config:
    return apply_overrides(preset("tiny"), [
        f"data.root={data_root}", "data.train_scales=(64,)", "data.val_size=64", "data.max_size=96",
        "data.num_workers=0", "model.num_encoder_layers=1", "model.num_decoder_layers=2",
        "model.d_model=32", "model.nheads=4", "model.n_points=2", "model.dim_feedforward=64",
        "model.num_queries=20", "model.num_feature_levels=3", "model.deform_backend=torch",
        "model.backbone_norm=frozen_bn",
        "model.supervision=ms", "matcher.max_pos_fraction=1.0", "train.batch_size=2",
        "train.max_steps_per_epoch=2", "train.epochs=2", "train.lr_drop=10", "train.device=cpu",
        f"train.output_dir={output_dir}"])


def _deterministic_transforms():
    """Train with the val pipeline (no random flip): same images on 1 or 2 processes."""
    import msdetr_lite.data as data
    original = data.build_transforms
    data.build_transforms = lambda data_cfg, split: original(data_cfg, "val")


def _deterministic_transforms_in_process(monkeypatch):
    import msdetr_lite.data as data
    original = data.build_transforms
    monkeypatch.setattr(data, "build_transforms", lambda data_cfg, split: original(data_cfg, "val"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, cfg_dict: dict, out_dir: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    _deterministic_transforms()
    summary = engine.train(Config.from_dict(cfg_dict), progress=False)
    torch.save(summary["model"].state_dict(), os.path.join(out_dir, f"rank{rank}.pt"))
    torch.save(summary["eval"]["final"]["AP"], os.path.join(out_dir, f"ap{rank}.pt"))


@pytest.fixture(scope="module")
def square_shapes(tmp_path_factory):
    from msdetr_lite.data.synthetic import generate
    root = tmp_path_factory.mktemp("square_shapes")
    generate(root, n_train=8, n_val=4, image_size=64, seed=1, aspect_jitter=0.0)
    return root


def test_two_process_gloo_stays_in_sync_and_matches_one_process(tmp_path, square_shapes, monkeypatch):
    cfg = _config(square_shapes, tmp_path / "ddp")
    mp.spawn(_worker, args=(2, _free_port(), cfg.to_dict(), str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for k in r0:
        assert torch.equal(r0[k], r1[k]), f"{k} differs between ranks"
    assert torch.load(tmp_path / "ap0.pt") == torch.load(tmp_path / "ap1.pt")   # eval gathered
    assert (tmp_path / "ddp" / "final.pth").is_file() and (tmp_path / "ddp" / "eval.json").is_file()

    # the same total batch in one process
    _deterministic_transforms_in_process(monkeypatch)
    single = engine.train(_config(square_shapes, tmp_path / "single"), progress=False)["model"].state_dict()
    engine.seed_everything(cfg.train.seed)
    cfg.model.num_classes = 4
    from msdetr_lite.models import build_model
    init = build_model(cfg.model).state_dict()
    moved = sum(float((single[k].float() - init[k].float()).norm() ** 2) for k in single) ** 0.5
    diff = sum(float((single[k].float() - r0[k].float()).norm() ** 2) for k in single) ** 0.5
    assert moved > 0
    assert diff < 0.01 * moved, f"DDP drifted from the single-process run: {diff:.3g} vs update {moved:.3g}"
