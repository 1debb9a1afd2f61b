"""A pretrained trunk without downloads: pretrain a ResNet once on a separate synthetic task, cache it.

    python -m msdetr_lite.trunk build [--out runs/trunks] [--steps 500] [--seed 1000] ...
    msdetr train --preset tiny $(python -m msdetr_lite.trunk overrides)            # fine-tune it
    msdetr train --preset tiny $(python -m msdetr_lite.trunk overrides --frozen)   # keep it frozen

    from msdetr_lite import trunk
    info = trunk.build()                    # trains once, then returns the cached trunk
    cfg = apply_overrides(preset("tiny"), trunk.overrides(info["path"]))

The paper starts from an ImageNet-pretrained ResNet-50 with frozen BatchNorm, the stem and
layer1 frozen and 0.1x the learning rate on the rest; the `tiny` preset cannot download one, so
it trains its resnet18 from random weights (trainable BatchNorm, full lr). This module gives
the paper's regime a trunk to start from.

**The task.** Synthetic shapes generated with another seed (default 1000; seed 0, the
detection data's, is refused) into a cache folder: different images from every detection
train and val image (each image's generator is seeded by (seed, split, index)). Per image the
trunk learns, from ordinary BatchNorm and random weights:
  * which of the 4 shape classes are present (multi-label BCE on a linear head over the global
    pooled layer4 features: torchvision's `fc`), and
  * where they are: for every stride-16 (layer3) and stride-32 (layer4) cell, which classes have
    an object centre in it, and which classes' boxes cover the cell's centre (FCOS's positives);
    a 1x1 conv per level, a sigmoid focal loss per map kind normalised by its positives.
Why: presence alone is a weak signal here (4 classes, 3-10 objects per image: 80% of the labels
are "present", 40% of the images hold all four) and a translation-invariant pooled feature can
solve it from a few discriminative pixels; a detector needs features that say *what is where*
at strides 8-32, which the maps ask of layer3 and layer4 directly (and, through them, of
layer2). Centres separate neighbouring objects (as the o2o matching must), coverage gives every
object several positive cells, so each image carries far more supervision than 4 labels. The
maps are discarded after pretraining; the saved `fc` is the presence head.

**The recipe** (`Recipe`): 500 AdamW steps of 16 images at 128 px (horizontal flips), lr 1e-3
with a linear warm-up over the first 5% and a cosine decay to 0, weight decay 1e-4, on 4000
generated images (2 passes): 294 CPU seconds (4.9 min) on one thread of a 2-core AMD EPYC;
wall 568 s beside two training runs (generating the 4200 images adds ~10 s once).
Deterministic: the same recipe on the same machine and thread count gives the same weights
(seeded torch, sampler and generator; no loader workers). The first recipe tried, 250 steps of 32 with centre maps only,
reached a held-out centre-map F1 of 0.17; this one 0.35 (coverage F1 0.42; presence stays near
its 81% always-present baseline), see docs/design.md.

**The cache.** `out/<arch>-<key>/` holds `<arch>.pth` (a torchvision state dict: loads into
`torchvision.models.resnet18(num_classes=4)` strictly and through `models/backbone.py`
`load_torchvision_weights`, which drops `fc`) and `trunk.json` (the recipe, the key, wall time,
final train loss and accuracies, held-out accuracies, the machine). `key` hashes the recipe and
this file's code (`code_version`: docstrings and comments aside), so an edited recipe or module
trains a new trunk and a second `build` of the same recipe reuses the first (it says so). The
images depend on msdetr_lite/data/synthetic.py too, which is not hashed: its output for given
arguments is meant never to change (see its docstring); `build --force` retrains. The generated images live in
`out/data/shapes-s<seed>-n<n>-v<n_val>-<size>/`. The default `out` is <repository>/runs/trunks.

**Using it** (`overrides`): `model.pretrained=<path>`, `model.backbone_norm=frozen_bn` (the
pretraining's BatchNorm statistics, frozen) and `train.lr_backbone` = 0.1 x `train.lr` (4e-5
for the tiny preset); `models/backbone.py` then freezes the stem and layer1. `frozen=True` adds
`model.train_backbone=false`: no trunk backward at all, the cheapest step.
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import sigmoid_focal_loss
from tqdm.auto import tqdm

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = PROJECT_ROOT / "runs" / "trunks"
INFO_FILE = "trunk.json"
DETECTION_SEED = 0          # the seed of the embedded detection data (data/shapes): never used here
NUM_CLASSES = 4             # synthetic.CLASS_NAMES
STRIDES = (16, 32)          # the map levels: layer3, layer4


@dataclass(frozen=True)
class Recipe:
    """Everything the trunk's weights depend on (with this file's source): its hash is the cache key."""
    arch: str = "resnet18"
    steps: int = 500
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup: float = 0.05          # fraction of the steps with a linear lr warm-up
    seed: int = 1000              # data generation and training
    n_images: int = 4000          # generated training images
    n_val: int = 200              # generated held-out images (accuracies in trunk.json)
    image_size: int = 128

    def problems(self) -> list[str]:
        from .models.backbone import _TRUNKS
        p = []
        if self.arch not in _TRUNKS:
            p.append(f"arch={self.arch!r}: expected one of {sorted(_TRUNKS)}")
        for name in ("steps", "batch_size", "n_images"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                p.append(f"{name}={getattr(self, name)!r}: must be an integer >= 1")
        if not isinstance(self.n_val, int) or self.n_val < 0:
            p.append(f"n_val={self.n_val!r}: must be an integer >= 0")
        if not self.lr > 0:
            p.append(f"lr={self.lr!r}: must be > 0")
        if not self.weight_decay >= 0:
            p.append(f"weight_decay={self.weight_decay!r}: must be >= 0")
        if not 0 <= self.warmup < 1:
            p.append(f"warmup={self.warmup!r}: must be in [0, 1)")
        if self.seed == DETECTION_SEED:
            p.append(f"seed={self.seed}: that is the detection data's seed (data/shapes); pretraining "
                     "must not see its images, pick another (default 1000)")
        elif not isinstance(self.seed, int) or self.seed < 0:
            p.append(f"seed={self.seed!r}: must be an integer >= 0")
        if not isinstance(self.image_size, int) or self.image_size < 48:
            p.append(f"image_size={self.image_size!r}: must be an integer >= 48 (12-48 px objects)")
        if not p and self.n_images < self.batch_size:
            p.append(f"n_images={self.n_images} is fewer than one batch (batch_size={self.batch_size})")
        return p

    def validate(self) -> "Recipe":
        problems = self.problems()
        if problems:
            raise ValueError("bad trunk recipe: " + "; ".join(problems))
        return self

    def key(self) -> str:
        """12 hex digits of a hash of the recipe and of this module's code (`code_version`)."""
        h = hashlib.sha1(json.dumps(dataclasses.asdict(self), sort_keys=True).encode())
        h.update(code_version().encode())
        return h.hexdigest()[:12]


def code_version() -> str:
    """This module's code as its syntax tree without docstrings: an edit to the code makes a new
    cache key, an edit to the documentation, comments or layout does not."""
    tree = ast.parse(Path(__file__).read_text())
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)) and body and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return hashlib.sha1(ast.dump(tree).encode()).hexdigest()


def trunk_dir(recipe: Recipe, out: str | Path = DEFAULT_OUT) -> Path:
    return Path(out) / f"{recipe.arch}-{recipe.key()}"


def weights_path(recipe: Recipe, out: str | Path = DEFAULT_OUT) -> Path:
    return trunk_dir(recipe, out) / f"{recipe.arch}.pth"


def data_dir(recipe: Recipe, out: str | Path = DEFAULT_OUT) -> Path:
    return Path(out) / "data" / f"shapes-s{recipe.seed}-n{recipe.n_images}-v{recipe.n_val}-{recipe.image_size}"


def cached_info(recipe: Recipe, out: str | Path = DEFAULT_OUT) -> Optional[dict]:
    """trunk.json of a complete build of `recipe` under `out`, or None."""
    d = trunk_dir(recipe, out)
    path = d / INFO_FILE
    if not path.is_file() or not weights_path(recipe, out).is_file():
        return None
    info = json.loads(path.read_text())
    return info if info.get("key") == recipe.key() else None


# ---------------------------------------------------------------- the pretraining model
class PretrainNet(nn.Module):
    """A torchvision ResNet (its `fc` = the presence head over C classes) plus one 1x1 conv per
    map level. forward(images) -> (presence logits [B, C], [map logits [B, 2C, H/s, W/s] per s in
    STRIDES]): channels [0, C) the centre maps, [C, 2C) the box-coverage maps (`targets_of`)."""

    def __init__(self, arch: str = "resnet18", num_classes: int = NUM_CLASSES):
        super().__init__()
        from .models.backbone import _TRUNKS
        ctor, (_, c3, c4) = _TRUNKS[arch]
        self.resnet = ctor(weights=None, num_classes=num_classes)
        self.maps = nn.ModuleList([nn.Conv2d(c3, 2 * num_classes, 1), nn.Conv2d(c4, 2 * num_classes, 1)])
        for conv in self.maps:            # start at p = 0.01 (the focal-loss prior)
            nn.init.constant_(conv.bias, -math.log(99.0))

    def forward(self, images: torch.Tensor):
        r = self.resnet
        x = r.layer2(r.layer1(r.maxpool(r.relu(r.bn1(r.conv1(images))))))
        f3 = r.layer3(x)
        f4 = r.layer4(f3)
        presence = r.fc(torch.flatten(r.avgpool(f4), 1))
        return presence, [self.maps[0](f3), self.maps[1](f4)]


def targets_of(targets: list[dict], map_shapes: Sequence[tuple[int, int]], num_classes: int = NUM_CLASSES):
    """(presence [B, C] in {0, 1}, [maps [B, 2C, h, w] in {0, 1}]) from the loader's targets
    (labels, normalised cxcywh boxes relative to the unpadded `size`). In a map of stride s,
    channel c of a cell is 1 where an object of class c has its centre in the cell, channel C + c
    where the cell's centre lies inside a box of class c (FCOS's positives)."""
    C = num_classes
    presence = torch.zeros(len(targets), C)
    maps = [torch.zeros(len(targets), 2 * C, h, w) for h, w in map_shapes]
    for b, t in enumerate(targets):
        labels = t["labels"]
        presence[b, labels] = 1.0
        h_img, w_img = (int(v) for v in t["size"])
        cx, cy, bw, bh = (t["boxes"] * torch.tensor([w_img, h_img, w_img, h_img])).unbind(-1)
        for m, s in zip(maps, STRIDES):
            h, w = m.shape[-2:]
            m[b, labels, (cy / s).long().clamp(0, h - 1), (cx / s).long().clamp(0, w - 1)] = 1.0
            xs, ys = (torch.arange(w) + 0.5) * s, (torch.arange(h) + 0.5) * s
            in_x = (xs >= (cx - bw / 2)[:, None]) & (xs <= (cx + bw / 2)[:, None])        # [G, w]
            in_y = (ys >= (cy - bh / 2)[:, None]) & (ys <= (cy + bh / 2)[:, None])        # [G, h]
            for label, cover in zip(labels.tolist(), in_y[:, :, None] & in_x[:, None, :]):
                m[b, C + label] = torch.maximum(m[b, C + label], cover.float())
    return presence, maps


def losses_and_hits(net: PretrainNet, images: torch.Tensor, targets: list[dict]) -> tuple[torch.Tensor, dict]:
    """(loss, counts) of one batch: BCE on presence + per map level a focal loss on the centres
    and one on the coverage, each summed and divided by its positives. counts: presence labels
    right / all / present; per stride-16 map kind, cells predicted (p > 0.5), true, and both."""
    presence, maps = net(images)
    C = presence.shape[1]
    t_presence, t_maps = targets_of(targets, [m.shape[-2:] for m in maps], C)
    loss = F.binary_cross_entropy_with_logits(presence, t_presence)
    for logits, t in zip(maps, t_maps):
        for part in (slice(0, C), slice(C, 2 * C)):
            loss = loss + (sigmoid_focal_loss(logits[:, part], t[:, part], reduction="sum")
                           / t[:, part].sum().clamp(min=1.0))
    with torch.no_grad():
        hits = {"presence_right": int(((presence > 0) == (t_presence > 0)).sum()), "presence_all": t_presence.numel(),
                "presence_true": int(t_presence.sum())}
        for kind, part in (("centre", slice(0, C)), ("cover", slice(C, 2 * C))):
            pred, true = maps[0][:, part] > 0, t_maps[0][:, part] > 0
            hits.update({f"{kind}_pred": int(pred.sum()), f"{kind}_true": int(true.sum()),
                         f"{kind}_both": int((pred & true).sum())})
    return loss, hits


def scores(hits: dict) -> dict:
    """Accuracies from summed `losses_and_hits` counts: presence accuracy, its always-present
    baseline, and the F1 at p > 0.5 of the stride-16 centre and coverage maps."""
    return {"presence_acc": round(hits["presence_right"] / max(1, hits["presence_all"]), 4),
            "presence_prior": round(hits["presence_true"] / max(1, hits["presence_all"]), 4),
            **{f"{k}_f1": round(2 * hits[f"{k}_both"] / max(1, hits[f"{k}_pred"] + hits[f"{k}_true"]), 4)
               for k in ("centre", "cover")}}


def _add(total: dict, hits: dict) -> dict:
    return {k: total.get(k, 0) + v for k, v in hits.items()}


# ---------------------------------------------------------------- data
def _data_config(recipe: Recipe, root: Path):
    """A Config whose data / train sections describe the pretraining images and batches, so the
    detection loaders and transforms serve (flip + resize to image_size, normalisation)."""
    from .config import Config, DataConfig
    cfg = Config()
    cfg.data = DataConfig(root=str(root), train_scales=(recipe.image_size,), val_size=recipe.image_size,
                          max_size=2 * recipe.image_size, random_crop=False, num_workers=0)
    cfg.train.seed, cfg.train.batch_size = recipe.seed, recipe.batch_size
    return cfg


def ensure_images(recipe: Recipe, out: str | Path = DEFAULT_OUT, quiet: bool = False) -> Path:
    """The generated pretraining images (COCO layout), generated first if missing."""
    from .data.synthetic import generate
    root = data_dir(recipe, out)
    if not all((root / "annotations" / f"instances_{s}.json").is_file() for s in ("train", "val")):
        if not quiet:
            print(f"generating {recipe.n_images} + {recipe.n_val} shapes images (seed {recipe.seed}) "
                  f"into {root}", flush=True)
        generate(root, n_train=recipe.n_images, n_val=recipe.n_val, image_size=recipe.image_size, seed=recipe.seed)
    return root


def _lr_factor(step: int, recipe: Recipe) -> float:
    """Linear warm-up over the first `warmup` of the steps, then cosine to 0."""
    warm = max(1, int(recipe.warmup * recipe.steps))
    if step < warm:
        return (step + 1) / warm
    return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, recipe.steps - warm)))


# ---------------------------------------------------------------- build
def pretrain(recipe: Recipe, root: Path, progress: bool = True) -> tuple[PretrainNet, dict]:
    """Train a PretrainNet on the images in `root`; returns (net in eval mode, stats)."""
    from .data import build_dataset, build_train_loader, build_val_loader

    cfg = _data_config(recipe, root)
    torch.manual_seed(recipe.seed)
    net = PretrainNet(recipe.arch)
    opt = torch.optim.AdamW(net.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    loader, sampler, generator = build_train_loader(cfg, build_dataset(cfg.data, "train"), recipe.batch_size)
    net.train()
    n_tail = max(1, recipe.steps // 10)           # the final loss / accuracies: the last 10% of the steps
    step, epoch, tail, hits, t0, cpu0 = 0, 0, [], {}, time.perf_counter(), time.process_time()
    bar = tqdm(total=recipe.steps, desc=f"pretraining {recipe.arch}", disable=not progress, dynamic_ncols=True)
    while step < recipe.steps:
        sampler.set_epoch(epoch)
        generator.manual_seed(recipe.seed + epoch)
        for images, _masks, targets in loader:
            for group in opt.param_groups:
                group["lr"] = recipe.lr * _lr_factor(step, recipe)
            loss, batch_hits = losses_and_hits(net, images, targets)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step, value = step + 1, loss.detach().item()
            if step > recipe.steps - n_tail:
                tail, hits = tail + [value], _add(hits, batch_hits)
            bar.update(1)
            bar.set_postfix(loss=f"{value:.3f}")
            if step >= recipe.steps:
                break
        epoch += 1
    bar.close()
    stats = {"train_seconds": round(time.perf_counter() - t0, 1), "train_cpu_seconds": round(
        time.process_time() - cpu0, 1), "epochs_seen": round(
        step * recipe.batch_size / recipe.n_images, 2), "final_train_loss": round(sum(tail) / len(tail), 4),
        "final_train": scores(hits)}
    net.eval()
    if recipe.n_val:
        val_hits, val_loss, n = {}, 0.0, 0
        with torch.no_grad():
            for images, _masks, targets in build_val_loader(cfg, build_dataset(cfg.data, "val"), recipe.batch_size):
                loss, batch_hits = losses_and_hits(net, images, targets)
                val_hits, val_loss, n = (_add(val_hits, batch_hits), val_loss + float(loss) * len(targets),
                                         n + len(targets))
        stats.update(val_loss=round(val_loss / n, 4), val=scores(val_hits))
    return net, stats


def build(recipe: Optional[Recipe] = None, out: str | Path = DEFAULT_OUT, progress: bool = True,
          force: bool = False, quiet: bool = False) -> dict:
    """Pretrain the trunk of `recipe` (default Recipe()) into `out`, or reuse a cached build.

    Returns trunk.json's dict plus "path" (the weights) and "cached" (True when nothing was trained).
    force: train again even if cached. One build at a time per trunk folder (a file lock).
    """
    from filelock import FileLock
    from .checkpoint import save_checkpoint
    from .kernel_bench import describe_machine

    recipe, out = (recipe or Recipe()).validate(), Path(out).resolve()
    d = trunk_dir(recipe, out)
    d.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(d.parent / f".{d.name}.lock")):
        info = None if force else cached_info(recipe, out)
        if info is not None:
            if not quiet:
                print(f"using the cached trunk {weights_path(recipe, out)} (recipe {recipe.key()}: "
                      f"built in {info['wall_seconds']:.0f} s on {info['machine']})", flush=True)
            return {**info, "path": str(weights_path(recipe, out)), "cached": True}
        t0, cpu0 = time.perf_counter(), time.process_time()
        root = ensure_images(recipe, out, quiet=quiet)
        net, stats = pretrain(recipe, root, progress=progress and not quiet)
        save_checkpoint(weights_path(recipe, out), net.resnet.state_dict())
        info = {"key": recipe.key(), "recipe": dataclasses.asdict(recipe), "weights": weights_path(recipe, out).name,
                "data": str(root), "wall_seconds": round(time.perf_counter() - t0, 1),
                # CPU seconds of this process: on a shared machine the wall time says more about the neighbours
                "cpu_seconds": round(time.process_time() - cpu0, 1), **stats,
                "load_average": round(os.getloadavg()[0], 2), "threads": torch.get_num_threads(),
                "torch": torch.__version__, "machine": describe_machine()}
        tmp = d / f".{INFO_FILE}.tmp"
        tmp.write_text(json.dumps(info, indent=1) + "\n")
        tmp.replace(d / INFO_FILE)                    # written last: its presence means complete
    if not quiet:
        print(f"built {weights_path(recipe, out)} in {info['wall_seconds']:.0f} s "
              f"({info['cpu_seconds']:.0f} CPU s)", flush=True)
    return {**info, "path": str(weights_path(recipe, out)), "cached": False}


def overrides(path: str | Path, lr: Optional[float] = None, frozen: bool = False) -> list[str]:
    """Config overrides that start a detector from the trunk at `path`: the paper's regime
    (frozen BatchNorm, stem + layer1 frozen by the backbone, 0.1x backbone lr). lr: the
    detector's train.lr (default: the tiny preset's, 4e-4). frozen: freeze the whole trunk."""
    from .config import preset
    path = Path(path).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"no trunk weights at {path}; build one with `python -m msdetr_lite.trunk build`")
    info = path.parent / INFO_FILE
    arch = json.loads(info.read_text())["recipe"]["arch"] if info.is_file() else "resnet18"
    lr = preset("tiny").train.lr if lr is None else lr
    out = [f"model.backbone={arch}", f"model.pretrained={path}", "model.backbone_norm=frozen_bn",
           f"train.lr_backbone={0.1 * lr:g}"]
    return out + ["model.train_backbone=false"] if frozen else out


# ---------------------------------------------------------------- command line
def _recipe_args(parser: argparse.ArgumentParser) -> None:
    defaults = Recipe()
    parser.add_argument("--out", default=str(DEFAULT_OUT), help=f"cache folder (default {DEFAULT_OUT})")
    for f in dataclasses.fields(Recipe):
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(getattr(defaults, f.name)),
                            default=getattr(defaults, f.name), help=f"default {getattr(defaults, f.name)}")


def _recipe_from(args: argparse.Namespace) -> Recipe:
    return Recipe(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Recipe)})


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m msdetr_lite.trunk", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="pretrain the trunk (or reuse the cached one) and print its overrides")
    _recipe_args(b)
    b.add_argument("--force", action="store_true", help="train again even if cached")
    b.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: the documented timing)")
    b.add_argument("--no-progress", action="store_true")
    o = sub.add_parser("overrides", help="print the config overrides of the cached trunk of a recipe")
    _recipe_args(o)
    o.add_argument("--frozen", action="store_true", help="also freeze the whole trunk (model.train_backbone=false)")
    o.add_argument("--detector-lr", type=float, default=None,
                   help="the detector's train.lr (default: the tiny preset's, 4e-4)")
    args = parser.parse_args(argv)
    try:
        recipe = _recipe_from(args).validate()
        if args.cmd == "build":
            torch.set_num_threads(max(1, args.threads))
            info = build(recipe, args.out, progress=not args.no_progress)
            print(json.dumps({k: v for k, v in info.items() if k != "recipe"}, indent=1))
            print("use it with:", " ".join(overrides(info["path"])))
            return 0
        if cached_info(recipe, args.out) is None:
            raise FileNotFoundError(f"no trunk of this recipe in {args.out} (key {recipe.key()}); "
                                    "run `python -m msdetr_lite.trunk build` with the same arguments first")
        print(" ".join(overrides(weights_path(recipe, args.out), args.detector_lr, args.frozen)))
        return 0
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
