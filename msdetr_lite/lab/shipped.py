"""Trained models that ship with the repository: the notebooks open on them instead of training.

    weights/<scheme>/shipped.json     what was shipped, how it was verified, where it was trained
    weights/<scheme>/model.pth        fp16 weights (o2o and ms: the models notebooks 00-04 load)
    weights/<scheme>/metrics.jsonl    the run's record (all four schemes: 03's curves and tables)
    weights/<scheme>/eval.json, eval-nms.json, config.json

    python -m msdetr_lite.lab ship              # pack the zoo's full-mode runs into weights/
    shipped.install("ms", run_dir)             # verify, then lay it out as a zoo run (zoo.py calls it)

**Why fp16.** The `tiny` model has 14.4M parameters, 80% of them the ResNet-18 trunk: 58 MB per
model in fp32, 29 MB in fp16, and the repository can hold about 60 MB of weights once. Stored in
fp16, loaded back to fp32: `pack` evaluates both on the whole val split and records the AP of
each (shipped.json "fp16_check"); a test holds the difference to <= 0.5 AP. Tensors that fp16
cannot hold (|x| > 60000) stay fp32. The per-epoch snapshots do not ship (8 more models): the
initialisation is rebuilt from the seed, so the notebooks' epoch controls offer "init" and the
final model until `make zoo-train` trains the intermediate epochs locally (about 10 min per model
on one core of a 2-core AMD EPYC). Notebook 03's other two schemes (hybrid, group) ship their
records only: its curves and tables need no weights.

**Verified before use** (`verify`): the file's sha256; the configuration it was trained with
against the zoo's configuration today (data root aside); a strict load into today's model; and
a *fingerprint*: the final layer's top-10 scores and boxes on two val images, recorded at
packing, recomputed on load, within 2e-3 (float differences between CPUs are ~1e-5). So a change
to the model code that changes what the weights compute is caught, and the zoo trains instead,
saying so.
"""
from __future__ import annotations

import json
import platform
import shutil
import time
from pathlib import Path
from typing import Optional

from ..outputs import file_sha256
from . import PROJECT_ROOT, relative

WEIGHTS_DIR = PROJECT_ROOT / "weights"
SHIPPED_FILE = "shipped.json"
WEIGHTS_FILE = "model.pth"
RECORDS = ("metrics.jsonl", "eval.json", "eval-nms.json", "config.json")
VERSION = 1
FP16_MAX = 60000.0              # fp16's largest finite value is 65504
FINGERPRINT_IMAGES = (0, 1)     # val indices
FINGERPRINT_TOP = 10
FINGERPRINT_ATOL = 2e-3
WITH_WEIGHTS = ("ms", "o2o")    # what notebooks 00-04 load as models; hybrid and group: records only

__all__ = ["WEIGHTS_DIR", "WITH_WEIGHTS", "ShippedError", "info", "available", "verify", "install", "pack",
           "portable_request", "to_fp16", "fingerprint", "save_initialisation"]


class ShippedError(ValueError):
    """A shipped model that is missing, altered, or no longer what today's code computes."""


def portable_request(request: dict) -> dict:
    """A zoo request (the run's config as a dict) without what depends on the checkout: the data
    root becomes its path relative to the repository (`data/shapes`), the output folder goes.
    Read through today's Config first, so that a field added since with its default (the
    configuration the weights were trained with) does not make a shipped model another recipe."""
    from ..config import Config, ConfigError
    try:
        d = Config.from_dict(json.loads(json.dumps(request))).to_dict()
    except (ConfigError, TypeError, KeyError):        # a field removed or renamed since: another recipe
        d = json.loads(json.dumps(request))
    root = Path(d["data"]["root"])
    try:
        d["data"]["root"] = str(root.resolve().relative_to(PROJECT_ROOT)) if root.is_absolute() else str(root)
    except ValueError:
        d["data"]["root"] = str(root)
    d["train"].pop("output_dir", None)
    return d


def info(scheme: str, root: Optional[Path] = None) -> Optional[dict]:
    """weights/<scheme>/shipped.json, or None if nothing ships for `scheme`."""
    root = WEIGHTS_DIR if root is None else Path(root)
    path = root / scheme / SHIPPED_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def available(scheme: str, request: dict, root: Optional[Path] = None) -> bool:
    """Whether records of `scheme` trained with `request` ship (cheap: no hashing, no forward)."""
    root = WEIGHTS_DIR if root is None else Path(root)
    meta = info(scheme, root)
    return bool(meta and meta.get("version") == VERSION and meta.get("request")
                and portable_request(meta["request"]) == portable_request(request))


def to_fp16(state_dict: dict) -> dict:
    """Floating tensors to fp16, except those fp16 cannot hold; integers (BatchNorm's counters) as they are."""
    import torch
    out = {}
    for k, v in state_dict.items():
        if v.is_floating_point() and (v.numel() == 0 or float(v.abs().max()) <= FP16_MAX):
            out[k] = v.detach().to(torch.float16).contiguous()
        else:
            out[k] = v.detach().clone()
    return out


def fingerprint(model, cfg) -> dict:
    """The final decoder layer's FINGERPRINT_TOP best scores and their boxes (cxcywh, normalised)
    on val images FINGERPRINT_IMAGES, one image at a time (no padding): {"scores": [[...]], "boxes": [[[4]]]}."""
    import torch

    from ..data import build_dataset
    ds = build_dataset(cfg.data, "val")
    scores, boxes = [], []
    with torch.no_grad():
        for i in FINGERPRINT_IMAGES:
            image, _ = ds[i]
            final = model(image.unsqueeze(0))["o2o"][-1]             # the detector's output: last layer
            prob = final["logits"][0].sigmoid()                          # (Q, C)
            best, flat = prob.flatten().topk(FINGERPRINT_TOP)
            scores.append([round(float(s), 6) for s in best])
            q = flat // prob.shape[1]
            boxes.append([[round(float(x), 6) for x in b] for b in final["boxes"][0][q]])
    return {"images": list(FINGERPRINT_IMAGES), "scores": scores, "boxes": boxes}


def _fingerprint_gap(a: dict, b: dict) -> float:
    """The largest difference between two fingerprints, order-free: each detection (score and
    box) against its nearest in the other, both ways, so near-tied scores that swap places
    between CPUs do not count as a change."""
    import torch
    if a.get("images") != b.get("images"):
        return float("inf")
    gap = 0.0
    for sa, ba, sb, bb in zip(a["scores"], a["boxes"], b["scores"], b["boxes"]):
        da = torch.cat([torch.tensor(sa)[:, None], torch.tensor(ba)], 1)          # (N, 5)
        db = torch.cat([torch.tensor(sb)[:, None], torch.tensor(bb)], 1)
        d = (da[:, None] - db[None]).abs().amax(-1)                                # (N, M)
        gap = max(gap, float(d.amin(1).max()), float(d.amin(0).max()))
    return gap


def verify(scheme: str, request: dict, root: Optional[Path] = None):
    """(model in eval mode, Config) of a shipped model, after every check in the module docstring;
    raises ShippedError naming the first check that fails."""
    root = WEIGHTS_DIR if root is None else Path(root)
    import torch

    from ..checkpoint import build_model_from_config, load_checkpoint, load_weights
    from ..config import Config

    meta = info(scheme, root)
    if meta is None or not meta.get("weights"):
        raise ShippedError(f"no shipped weights for {scheme} in {relative(root)}")
    if meta.get("version") != VERSION:
        raise ShippedError(f"{relative(root / scheme / SHIPPED_FILE)} is version {meta.get('version')}, this code reads {VERSION}")
    if not meta.get("request") or portable_request(meta["request"]) != portable_request(request):
        raise ShippedError(f"the shipped {scheme} was trained with another configuration than the zoo's today")
    path = root / scheme / meta["weights"]["file"]
    if not path.is_file():
        raise ShippedError(f"{relative(path)} is missing")
    if file_sha256(path) != meta["weights"]["sha256"]:
        raise ShippedError(f"{relative(path)} does not match the sha256 in its shipped.json (altered or truncated)")
    ckpt = load_checkpoint(path)
    cfg = Config.from_dict(ckpt["config"])
    cfg.data.root = request["data"]["root"]
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in ckpt["model"].items()}
    model = load_weights(build_model_from_config(cfg, torch.device("cpu")), state, path).eval()
    gap = _fingerprint_gap(fingerprint(model, cfg), meta["fingerprint"])
    if not gap <= FINGERPRINT_ATOL:
        raise ShippedError(f"the shipped {scheme} computes other outputs with today's model code than when it was "
                           f"packed (largest difference {gap:.3g} > {FINGERPRINT_ATOL:g})")
    return model, cfg


def save_initialisation(path: Path, cfg) -> None:
    """Write `path` (a zoo run's epoch_0.pth): the weights the engine starts `cfg` from, rebuilt
    in its order (seed, then build; cfg.model.num_classes already the data's), weights only.
    The zoo's own runs write theirs with it too (zoo.train_run)."""
    from ..checkpoint import save_checkpoint
    from ..engine import seed_everything
    from ..models import build_model
    seed_everything(cfg.train.seed)
    save_checkpoint(path, {"model": build_model(cfg.model).state_dict(), "config": cfg.to_dict(), "epoch": 0})


def install(scheme: str, request: dict, out: Path, code: str, root: Optional[Path] = None) -> dict:
    """Lay the shipped `scheme` out in `out` as a zoo run: its records, and where weights ship,
    final.pth (fp32) and epoch_0.pth (the initialisation, rebuilt from the seed). Returns the
    zoo.json it wrote. Raises ShippedError (and writes nothing) when a check fails."""
    root = WEIGHTS_DIR if root is None else Path(root)
    from ..checkpoint import save_checkpoint
    from ..config import Config

    meta = info(scheme, root)
    if meta is None:
        raise ShippedError(f"nothing ships for {scheme}")
    model = cfg = None
    if meta.get("weights"):
        model, cfg = verify(scheme, request, root)
    elif not available(scheme, request, root):
        raise ShippedError(f"the shipped {scheme} records are of another configuration than the zoo's today")
    out.mkdir(parents=True, exist_ok=True)
    for name in RECORDS:
        if (root / scheme / name).is_file():
            shutil.copyfile(root / scheme / name, out / name)
    if (out / "config.json").is_file():           # this checkout's data and run folder, as a trained run has
        d = json.loads((out / "config.json").read_text())
        d["data"]["root"], d["train"]["output_dir"] = request["data"]["root"], str(out)
        (out / "config.json").write_text(json.dumps(d, indent=2) + "\n")
    snapshots = {}
    if model is not None:
        cfg.train.output_dir = str(out)
        save_checkpoint(out / "final.pth", {"model": model.state_dict(), "config": cfg.to_dict(),
                                            "epoch": cfg.train.epochs})
        save_initialisation(out / "epoch_0.pth", Config.from_dict(cfg.to_dict()))
        snapshots = {"0": "epoch_0.pth", str(cfg.train.epochs): "final.pth"}
    return {"version": 1, "supervision": scheme, "mode": "full", "overrides": [], "request": request,
            "code": code, "snapshots": snapshots, "wall_time": meta["trained"]["wall_time"],
            "torch_threads": meta["trained"]["torch_threads"], "finished": meta["trained"]["finished"],
            "shipped": {"sha256": meta["weights"]["sha256"] if meta.get("weights") else None,
                        "machine": meta["trained"]["machine"], "installed": time.strftime("%Y-%m-%d %H:%M:%S")}}


def _portable_copy(src: Path, dst: Path) -> None:
    """Copy a run record without the absolute paths of the checkout it was trained in: config.json's
    data root and output folder become repository-relative, eval-nms.json's tie to the zoo.json of
    that checkout becomes "shipped" (zoo.nms_evaluation accepts it for a shipped run)."""
    if src.name == "config.json":
        d = json.loads(src.read_text())
        d["data"]["root"] = portable_request(d)["data"]["root"]
        out_dir = Path(d["train"].get("output_dir") or "")
        d["train"]["output_dir"] = f"runs/notebooks/full/{out_dir.name}" if out_dir.name else ""
        dst.write_text(json.dumps(d, indent=2) + "\n")
    elif src.name == "eval-nms.json":
        d = json.loads(src.read_text())
        d["zoo"] = "shipped"
        dst.write_text(json.dumps(d) + "\n")
    else:
        shutil.copyfile(src, dst)


def pack(scheme: str, run: Path, zoo_info: dict, root: Optional[Path] = None, weights: Optional[bool] = None) -> dict:
    """Pack a finished zoo run (full mode) into root/<scheme>/: records, and fp16 weights when
    `weights` (default: scheme in WITH_WEIGHTS), evaluated fp32 vs fp16 on the whole val split."""
    root = WEIGHTS_DIR if root is None else Path(root)
    import torch

    from ..checkpoint import save_checkpoint
    from ..data import build_dataset, build_val_loader
    from ..engine import load_model_from_checkpoint
    from ..evaluation import evaluate
    from ..kernel_bench import describe_machine

    weights = scheme in WITH_WEIGHTS if weights is None else weights
    dest = root / scheme
    dest.mkdir(parents=True, exist_ok=True)
    for name in RECORDS:
        if (run / name).is_file():
            _portable_copy(run / name, dest / name)
    meta = {"version": VERSION, "scheme": scheme, "request": portable_request(zoo_info["request"]), "weights": None,
            "trained": {"machine": zoo_info.get("machine") or describe_machine(), "wall_time": zoo_info["wall_time"],
                        "torch_threads": zoo_info["torch_threads"], "finished": zoo_info["finished"],
                        "code": zoo_info["code"], "torch": torch.__version__, "python": platform.python_version()}}
    if weights:
        model, cfg = load_model_from_checkpoint(run / "final.pth", device="cpu")
        sd16 = to_fp16(model.state_dict())
        cfg_dict = cfg.to_dict()
        cfg_dict["train"]["output_dir"] = ""
        save_checkpoint(dest / WEIGHTS_FILE, {"model": sd16, "config": cfg_dict, "epoch": cfg.train.epochs})
        loader = build_val_loader(cfg, build_dataset(cfg.data, "val"), cfg.train.batch_size)
        ap32 = evaluate(model, loader, "cpu", progress=False)["final"]["AP"]
        model.load_state_dict({k: (v.float() if v.is_floating_point() else v) for k, v in sd16.items()})
        ap16 = evaluate(model, loader, "cpu", progress=False)["final"]["AP"]
        meta["weights"] = {"file": WEIGHTS_FILE, "sha256": file_sha256(dest / WEIGHTS_FILE), "dtype": "float16",
                           "bytes": (dest / WEIGHTS_FILE).stat().st_size,
                           "params": sum(v.numel() for v in sd16.values()),
                           "kept_fp32": sorted(k for k, v in sd16.items() if v.dtype == torch.float32)}
        meta["fp16_check"] = {"AP_fp32": ap32, "AP_fp16": ap16, "val_images": len(loader.dataset)}
        meta["fingerprint"] = fingerprint(model, cfg)
    (dest / SHIPPED_FILE).write_text(json.dumps(meta, indent=1) + "\n")
    return meta
