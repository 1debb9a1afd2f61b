"""The pretrained trunk (msdetr_lite/trunk.py): deterministic, cached by recipe, loadable by the detector."""
from __future__ import annotations

import json

import pytest
import torch
import torchvision

from msdetr_lite import trunk
from msdetr_lite.config import apply_overrides, preset
from msdetr_lite.models import build_model

# a few steps on a handful of small images: seconds
SMALL = dict(steps=2, batch_size=4, n_images=8, n_val=4, image_size=64)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("trunks")
    return out, trunk.build(trunk.Recipe(**SMALL), out, progress=False, quiet=True)


def test_build_writes_a_torchvision_state_dict_and_its_record(built):
    out, info = built
    assert not info["cached"] and info["path"].endswith("resnet18.pth")
    state = torch.load(info["path"], weights_only=True)
    torchvision.models.resnet18(num_classes=trunk.NUM_CLASSES).load_state_dict(state)   # strict
    record = json.loads((trunk.trunk_dir(trunk.Recipe(**SMALL), out) / trunk.INFO_FILE).read_text())
    assert record["recipe"] == {**trunk.Recipe().__dict__, **SMALL} and record["key"] == trunk.Recipe(**SMALL).key()
    assert {"wall_seconds", "cpu_seconds", "final_train_loss", "final_train", "val", "machine"} <= set(record)
    assert 0 <= record["final_train"]["presence_acc"] <= 1


def test_build_is_deterministic(built, tmp_path):
    _, info = built
    again = trunk.build(trunk.Recipe(**SMALL), tmp_path, progress=False, quiet=True)
    a, b = torch.load(info["path"], weights_only=True), torch.load(again["path"], weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert again["final_train_loss"] == info["final_train_loss"]


def test_second_build_reuses_the_cache(built, capsys):
    out, info = built
    path = trunk.weights_path(trunk.Recipe(**SMALL), out)
    mtime = path.stat().st_mtime_ns
    again = trunk.build(trunk.Recipe(**SMALL), out, progress=False)
    assert again["cached"] and again["path"] == info["path"] and path.stat().st_mtime_ns == mtime
    assert "using the cached trunk" in capsys.readouterr().out


def test_the_detector_loads_it_with_frozen_batchnorm(built):
    _, info = built
    cfg = apply_overrides(preset("tiny"), trunk.overrides(info["path"]))
    assert cfg.model.backbone_norm == "frozen_bn" and cfg.train.lr_backbone == pytest.approx(0.1 * cfg.train.lr)
    model = build_model(cfg.model)
    state = torch.load(info["path"], weights_only=True)
    bb = model.backbone
    assert torch.equal(bb.layer3[0].conv1.weight, state["layer3.0.conv1.weight"])
    assert torch.equal(bb.stem[1].running_mean, state["bn1.running_mean"])          # statistics carried over
    assert isinstance(bb.stem[1], torchvision.ops.FrozenBatchNorm2d)
    assert not any(p.requires_grad for p in [*bb.stem.parameters(), *bb.layer1.parameters()])
    assert all(p.requires_grad for p in bb.layer4.parameters())
    frozen = build_model(apply_overrides(preset("tiny"), trunk.overrides(info["path"], frozen=True)).model)
    assert not any(p.requires_grad for p in frozen.backbone.parameters())


def test_a_changed_recipe_or_code_gets_another_key(monkeypatch):
    base = trunk.Recipe(**SMALL)
    keys = {base.key(), trunk.Recipe(**{**SMALL, "steps": 3}).key(), trunk.Recipe(**{**SMALL, "seed": 1001}).key(),
            trunk.Recipe(**{**SMALL, "n_images": 9}).key()}
    assert len(keys) == 4 and trunk.Recipe(**SMALL).key() == base.key()
    monkeypatch.setattr(trunk, "code_version", lambda: "edited")
    assert base.key() not in keys


def test_centre_map_targets():
    # one image 64 x 96 (h, w): a class-2 object centred at (x 40, y 20) px, a class-0 one at (90, 60)
    t = {"labels": torch.tensor([2, 0]), "size": torch.tensor([64, 96]),
         "boxes": torch.tensor([[40 / 96, 20 / 64, 0.1, 0.1], [90 / 96, 60 / 64, 0.1, 0.1]])}
    presence, (m16, m32) = trunk.targets_of([t], [(4, 6), (2, 3)])
    assert presence.tolist() == [[1, 0, 1, 0]] and m16.shape == (1, 8, 4, 6) and m32.shape == (1, 8, 2, 3)
    assert m16[0, 2, 1, 2] == 1 and m16[0, 0, 3, 5] == 1 and m16[0, :4].sum() == 2          # centres
    assert m32[0, 2, 0, 1] == 1 and m32[0, 0, 1, 2] == 1 and m32[0, :4].sum() == 2
    # coverage: the class-2 box spans x 35.2-44.8, y 16.8-23.2 px; cell centres at 8 + 16 i: x 40, y 24 (no)
    assert m16[0, 4 + 2].sum() == 0
    t["boxes"][0, 2:] = torch.tensor([40 / 96, 20 / 64])                  # 40 x 20 px: x 20-60, y 10-30
    _, (m16, m32) = trunk.targets_of([t], [(4, 6), (2, 3)])
    assert m16[0, 4 + 2].nonzero().tolist() == [[1, 1], [1, 2], [1, 3]]       # centres x 24, 40, 56; y 24
    assert m32[0, 4 + 2].nonzero().tolist() == [[0, 1]]                       # x 48, y 16


@pytest.mark.parametrize("bad, words", [
    ({"seed": 0}, "detection data's seed"), ({"steps": 0}, "steps=0"), ({"arch": "vgg"}, "arch='vgg'"),
    ({"image_size": 32}, "image_size=32"), ({"n_images": 2, "batch_size": 4}, "fewer than one batch"),
    ({"lr": -1.0}, "lr=-1.0"), ({"warmup": 1.0}, "warmup=1.0")])
def test_bad_recipes_are_rejected_clearly(bad, words, tmp_path):
    with pytest.raises(ValueError, match="bad trunk recipe") as e:
        trunk.build(trunk.Recipe(**{**SMALL, **bad}), tmp_path, progress=False, quiet=True)
    assert words in str(e.value)
    assert not any(tmp_path.iterdir())                       # nothing generated or trained


def test_overrides_need_built_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match="trunk build"):
        trunk.overrides(tmp_path / "missing.pth")


def test_cli_overrides_without_a_build_is_a_clear_error(tmp_path, capsys):
    assert trunk.main(["overrides", "--out", str(tmp_path)]) == 2
    assert "run `python -m msdetr_lite.trunk build`" in capsys.readouterr().err
    assert trunk.main(["build", "--seed", "0", "--out", str(tmp_path)]) == 2
    assert "detection data's seed" in capsys.readouterr().err


def test_overrides_name_the_trunks_arch(built):
    _, info = built
    assert trunk.overrides(info["path"], lr=1e-3) == [
        "model.backbone=resnet18", f"model.pretrained={info['path']}", "model.backbone_norm=frozen_bn",
        "train.lr_backbone=0.0001"]
