"""The shipped models (msdetr_lite/lab/shipped.py, weights/): packed, verified, installed into the zoo.

The round trip runs on a fast-mode run trained here into a temporary folder; the last tests load
the real weights/ the notebooks open on, with training forbidden."""
import json
import shutil

import pytest
import torch

from msdetr_lite.lab import shipped, zoo


@pytest.fixture(scope="module")
def fast_run(tmp_path_factory):
    """A fast-mode ms zoo run and its zoo.json, in its own zoo folder."""
    root = tmp_path_factory.mktemp("zoo")
    mp = pytest.MonkeyPatch()
    mp.setenv("MSDETR_ZOO_DIR", str(root))
    try:
        zoo.get_checkpoint("ms", fast=True, quiet=True)
        run = zoo.run_dir("ms", fast=True)
        yield run, json.loads((run / "zoo.json").read_text())
    finally:
        mp.undo()


def test_to_fp16_keeps_integers_and_what_fp16_cannot_hold():
    sd = {"w": torch.randn(4, 4), "big": torch.tensor([1e5, 1.0]), "n": torch.tensor(7), "e": torch.zeros(0)}
    out = shipped.to_fp16(sd)
    assert out["w"].dtype == torch.float16 and torch.allclose(out["w"].float(), sd["w"], atol=1e-2)
    assert out["big"].dtype == torch.float32 and out["n"].dtype == torch.int64 and out["e"].dtype == torch.float16


def test_portable_request_drops_the_checkout():
    req = json.loads(json.dumps(zoo._request(zoo.zoo_config("ms", fast=False))))
    req["train"]["output_dir"] = "/somewhere/else"
    port = shipped.portable_request(req)
    assert port["data"]["root"] == "data/shapes" and "output_dir" not in port["train"]
    assert req["train"]["output_dir"] == "/somewhere/else"          # the argument is not modified


def test_pack_verify_install_round_trip(fast_run, tmp_path):
    run, info = fast_run
    meta = shipped.pack("ms", run, info, root=tmp_path / "w")
    assert meta["weights"]["dtype"] == "float16" and meta["weights"]["params"] > 1e6
    assert abs(meta["fp16_check"]["AP_fp16"] - meta["fp16_check"]["AP_fp32"]) <= 0.005
    assert len(meta["fingerprint"]["scores"]) == len(shipped.FINGERPRINT_IMAGES)
    request = info["request"]
    assert shipped.available("ms", request, tmp_path / "w") and not shipped.available("o2o", request, tmp_path / "w")
    model, cfg = shipped.verify("ms", request, tmp_path / "w")
    fp32 = torch.load(run / "final.pth", weights_only=True)["model"]
    for k, v in model.state_dict().items():
        assert torch.allclose(v.float(), fp32[k].float(), rtol=1e-3, atol=1e-3), k

    out = tmp_path / "installed"
    zoo_info = shipped.install("ms", request, out, code="abc", root=tmp_path / "w")
    assert zoo_info["snapshots"] == {"0": "epoch_0.pth", str(cfg.train.epochs): "final.pth"}
    assert zoo_info["shipped"]["sha256"] == meta["weights"]["sha256"]
    for name in ("final.pth", "epoch_0.pth", "metrics.jsonl", "eval.json"):
        assert (out / name).is_file(), name
    # the initialisation is rebuilt from the seed: the same tensors as the run's own epoch_0.pth
    init = torch.load(out / "epoch_0.pth", weights_only=True)["model"]
    ref = torch.load(run / "epoch_0.pth", weights_only=True)["model"]
    assert all(torch.equal(init[k], ref[k]) for k in ref)


def test_verify_refuses_what_was_altered(fast_run, tmp_path):
    run, info = fast_run
    root = tmp_path / "w"
    shipped.pack("ms", run, info, root=root)
    request = info["request"]
    other = json.loads(json.dumps(request))
    other["train"]["lr"] = 1.0
    with pytest.raises(shipped.ShippedError, match="another configuration"):
        shipped.verify("ms", other, root)

    weights = root / "ms" / shipped.WEIGHTS_FILE
    good = weights.read_bytes()
    weights.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    with pytest.raises(shipped.ShippedError, match="sha256"):
        shipped.verify("ms", request, root)
    weights.write_bytes(good)

    # weights that load but compute something else than when packed: caught by the fingerprint
    meta = json.loads((root / "ms" / "shipped.json").read_text())
    meta["fingerprint"]["scores"][0][0] += 0.05
    (root / "ms" / "shipped.json").write_text(json.dumps(meta))
    with pytest.raises(shipped.ShippedError, match="fingerprint|other outputs"):
        shipped.verify("ms", request, root)
    with pytest.raises(shipped.ShippedError):
        shipped.install("ms", request, tmp_path / "never", code="abc", root=root)
    assert not (tmp_path / "never").exists()                         # nothing written


def test_records_only_scheme_ships_without_weights(fast_run, tmp_path):
    run, info = fast_run
    meta = shipped.pack("hybrid", run, info, root=tmp_path / "w", weights=False)
    assert meta["weights"] is None and not (tmp_path / "w" / "hybrid" / shipped.WEIGHTS_FILE).exists()
    with pytest.raises(shipped.ShippedError, match="no shipped weights"):
        shipped.verify("hybrid", info["request"], tmp_path / "w")


# ---------------------------------------------------------------- the real weights/
def _forbid_training(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the zoo trained although a shipped model fits")
    monkeypatch.setattr(zoo, "_train_subprocess", refuse)


@pytest.mark.parametrize("scheme", shipped.WITH_WEIGHTS)
def test_shipped_weights_are_current_and_open_without_training(scheme, tmp_path, monkeypatch):
    """What notebooks 00-04 open on: verified against today's model code and zoo recipe, laid
    out as a zoo run with "init" and the final epoch, never trained."""
    meta = shipped.info(scheme)
    assert meta is not None and meta["weights"], f"weights/{scheme} is missing"
    assert abs(meta["fp16_check"]["AP_fp16"] - meta["fp16_check"]["AP_fp32"]) <= 0.005
    monkeypatch.setenv("MSDETR_ZOO_DIR", str(tmp_path / "zoo"))
    _forbid_training(monkeypatch)
    labels = [label for label, _ in zoo.list_checkpoints(scheme, fast=False)]
    assert labels == ["init", f"epoch {zoo.zoo_config(scheme, fast=False).train.epochs}"]
    with pytest.raises(ValueError, match="make zoo-train"):
        zoo.get_checkpoint(scheme, fast=False, epoch=1, quiet=True)
    assert zoo.evaluation(scheme, fast=False)["final"]["AP"] == pytest.approx(meta["fp16_check"]["AP_fp32"])
    assert zoo.nms_evaluation(scheme, fast=False)["nms"]["iou"] == 0.7
    # a second call reuses the installed run
    stamp = (zoo.run_dir(scheme, fast=False) / "final.pth").stat().st_mtime_ns
    assert zoo.get_checkpoint(scheme, fast=False, quiet=True).stat().st_mtime_ns == stamp


def test_every_notebook_scheme_ships_its_record(tmp_path, monkeypatch):
    monkeypatch.setenv("MSDETR_ZOO_DIR", str(tmp_path / "zoo"))
    _forbid_training(monkeypatch)
    for scheme in zoo.BUILD_SCHEMES:
        zoo.ensure_run(scheme, fast=False, quiet=True)
        assert zoo.history(scheme, fast=False).epochs, scheme
        assert zoo.nms_evaluation(scheme, fast=False)["final"]["AP"] > 0, scheme
    sizes = sum(p.stat().st_size for p in shipped.WEIGHTS_DIR.rglob("*") if p.is_file())
    assert sizes <= 60 * 2**20, f"weights/ holds {sizes / 2**20:.1f} MiB, more than the 60 MiB the repository allows"


def test_shipped_weights_fall_back_to_training_when_altered(tmp_path, monkeypatch):
    """A shipped copy whose fingerprint no longer matches is not used: the zoo says why and trains."""
    root = tmp_path / "w"
    shutil.copytree(shipped.WEIGHTS_DIR / "ms", root / "ms")
    meta = json.loads((root / "ms" / "shipped.json").read_text())
    meta["fingerprint"]["boxes"][0][0][0] += 0.1
    (root / "ms" / "shipped.json").write_text(json.dumps(meta))
    monkeypatch.setattr(shipped, "WEIGHTS_DIR", root)
    monkeypatch.setenv("MSDETR_ZOO_DIR", str(tmp_path / "zoo"))
    trained = []
    monkeypatch.setattr(zoo, "_train_subprocess", lambda *a, **k: trained.append(a))
    with pytest.raises(RuntimeError, match="holds no complete run"):
        zoo.get_checkpoint("ms", fast=False, quiet=True)
    assert trained and trained[0][0] == "ms"


def test_a_config_field_added_since_with_its_default_keeps_the_recipe():
    """A shipped request written before a config field existed is the same recipe as today's, as
    long as the field's default is what it trained with; another value is another recipe."""
    today = zoo._request(zoo.zoo_config("ms", fast=False))
    old = json.loads(json.dumps(today))
    del old["data"]["allow_outside_paths"]                    # added by issue 23, default False
    assert shipped.portable_request(old) == shipped.portable_request(today)
    other = json.loads(json.dumps(today))
    other["data"]["allow_outside_paths"] = True
    assert shipped.portable_request(other) != shipped.portable_request(today)
