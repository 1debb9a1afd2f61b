"""Configuration as plain dataclasses, with two presets and command-line overrides.

    cfg = preset("tiny")                       # CPU-sized, trains on the embedded data
    cfg = preset("r50")                        # the paper's configuration
    apply_overrides(cfg, ["model.supervision=o2o", "train.epochs=24"])   # then checks every field
    cfg.problems()                             # [] or one line per problem ("train.lr=-1.0: must be > 0")
    cfg.validate()                             # raises ConfigError(problems) if there are any

Every default of the method (K, tau, alpha, loss weights, lr groups) is the authors' value,
see docs/method.md; the `tiny` preset shrinks sizes and, as its trunk trains from
random weights, gives the backbone the full learning rate.
"""
from __future__ import annotations

import ast
import dataclasses
import functools
import math
import re
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from msdetr_lite.errors import UserError

SUPERVISIONS = ("o2o", "ms", "hybrid", "group")
O2M_TAPS = ("after_ca", "after_sa", "output")
QUERY_POS = ("proposal", "reference")
BACKBONES = ("resnet18", "resnet34", "resnet50")
BACKBONE_NORMS = ("frozen_bn", "bn")
DEFORM_BACKENDS = ("auto", "torch", "numba", "cuda", "cuda_v2")   # ops.BACKENDS (tests check they agree)


class ConfigError(UserError, ValueError):
    """A configuration with problems; `problems` holds one line per problem (field and why)."""

    kind = "config error"

    def __init__(self, problems: list[str]):
        super().__init__(*problems)


@dataclass
class ModelConfig:
    backbone: str = "resnet50"
    pretrained: Optional[str] = None      # local path to a torchvision state dict; never downloaded
    train_backbone: bool = True
    backbone_norm: str = "frozen_bn"      # frozen_bn (pretrained trunks) | bn (training from scratch)
    num_classes: int = 80                 # set from the dataset by the engine
    d_model: int = 256
    nheads: int = 8
    num_feature_levels: int = 4           # strides 8, 16, 32 and an extra stride-64 level
    n_points: int = 4
    num_encoder_layers: int = 6
    num_decoder_layers: int = 6
    dim_feedforward: int = 2048
    dropout: float = 0.0
    num_queries: int = 300
    look_forward_twice: bool = True
    # positional query: "proposal" (the initial proposal box, fixed through the decoder, as in
    # Deformable DETR / H-DETR / the MS-DETR code) or "reference" (each layer's box, as in DINO)
    query_pos: str = "proposal"
    # class-agnostic NMS at this IoU on the encoder's proposals before the top-k become queries
    # (0 = off, as in the MS-DETR and Deformable DETR code; DETA applies NMS here): a departure
    # that keeps near-identical proposals from seeding several queries on one object
    proposal_nms: float = 0.0
    # the switch: o2o (Deformable-DETR++), ms (MS-DETR), hybrid (H-DETR), group (Group-DETR)
    supervision: str = "ms"
    o2m_tap: str = "after_ca"             # where o2m supervision taps the decoder layer (Fig. 4)
    # FFN on the tapped query (o2m only): every training script the authors released passes
    # --use_aux_ffn, so it is on here; off, `ms` adds no parameters over `o2o`.
    o2m_aux_ffn: bool = True
    hybrid_num_queries: int = 1500        # H-DETR's one-to-many query set
    group_num: int = 11                   # Group-DETR's number of query groups (incl. primary)
    deform_backend: str = "auto"          # ms_deform_attn backend: auto | torch | numba | cuda

    def validate(self) -> None:
        """Raise ConfigError listing every problem of the model section."""
        problems = section_problems("model", self)
        if problems:
            raise ConfigError(problems)


@dataclass
class MatcherConfig:
    # one-to-one (Hungarian) costs
    cost_class: float = 2.0
    cost_bbox: float = 5.0
    cost_giou: float = 2.0
    # one-to-many (top-K) matcher of MS-DETR
    k: int = 6
    tau: float = 0.4
    alpha: float = 0.3
    max_pos_fraction: float = 0.25


@dataclass
class LossConfig:
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    cls_o2o: float = 1.0
    bbox_o2o: float = 5.0
    giou_o2o: float = 2.0
    cls_o2m: float = 2.0
    bbox_o2m: float = 5.0
    giou_o2m: float = 2.0
    cls_enc: float = 2.0
    bbox_enc: float = 5.0
    giou_enc: float = 2.0
    iou_aware: bool = False               # classification targets = IoU instead of 1
    hybrid_k: int = 6                     # H-DETR repeats each GT K times
    hybrid_weight: float = 1.0            # H-DETR's one-to-many loss weight
    group_weight: float = 1.0             # weight of each extra Group-DETR group
    # A departure from the method, off by default (0): the o2m branch's losses count only up to
    # this epoch; later epochs train the o2o branch alone, so it can learn to suppress the
    # duplicates that o2m supervision creates (the regime study's `o2m_off_last` cell).
    o2m_last_epoch: int = 0
    # A departure, off by default (0 = every layer): o2m losses on the first o2m_layers decoder
    # layers only, so the last layers and their heads are trained one-to-one alone and keep a
    # stage that learns to de-duplicate (as H-DETR's hybrid-layer variant and Align-DETR do).
    o2m_layers: int = 0


@dataclass
class DataConfig:
    root: str = "data/shapes"             # COCO layout: root/{split}/ and root/annotations/instances_{split}.json
    train_split: str = "train"
    val_split: str = "val"
    train_scales: tuple = (480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800)
    val_size: int = 800
    max_size: int = 1333
    random_crop: bool = True
    num_workers: int = 2
    max_images: int = 0                   # 0 = all; >0 truncates each split (quick runs)
    # an image's file_name must lead to a file inside its split's image folder (no absolute path,
    # no ".."), so that an annotation file cannot make the library read files elsewhere; True
    # allows any path (an annotation file you trust that points elsewhere)
    allow_outside_paths: bool = False


@dataclass
class TrainConfig:
    lr: float = 2e-4
    lr_backbone: float = 2e-5
    lr_linear_proj_mult: float = 0.1      # sampling offsets and reference points
    weight_decay: float = 1e-4
    clip_max_norm: float = 0.1
    batch_size: int = 16                  # total over all processes
    epochs: int = 12
    lr_drop: int = 11
    seed: int = 42
    amp: bool = False                     # bf16 autocast, CUDA only
    device: str = "auto"
    output_dir: str = "runs/default"
    eval_every: int = 1
    log_every: int = 10                   # read losses back from the device every log_every steps
    max_steps_per_epoch: int = 0          # 0 = full epoch
    sync_bn: bool = False                 # DDP: synchronise BatchNorm statistics over the processes
    # every evaluation also scores AP after class-wise NMS at this IoU (0 = off): the headline AP
    # stays NMS-free, the difference is what duplicates cost (evaluation.evaluate(nms_iou=...))
    eval_nms_iou: float = 0.7
    # keep a weights-only snapshot of every epoch (epoch_N.pth beside checkpoint.pth): what the
    # regime study's mechanism probe reads to follow the decoder epoch by epoch
    keep_snapshots: bool = False


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    matcher: MatcherConfig = field(default_factory=MatcherConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def problems(self) -> list[str]:
        """Every problem of every field (type, range, allowed values, cross-field rules), one
        line each naming the field; [] for a valid config."""
        problems = [p for f in dataclasses.fields(self) for p in section_problems(f.name, getattr(self, f.name))]
        if not problems and self.loss.o2m_layers > self.model.num_decoder_layers:
            problems.append(f"loss.o2m_layers={self.loss.o2m_layers} is more than the decoder has "
                            f"(model.num_decoder_layers={self.model.num_decoder_layers}); 0 means every layer")
        return problems

    def validate(self) -> "Config":
        """Raise ConfigError with all `problems()`; returns the config when there are none."""
        problems = self.problems()
        if problems:
            raise ConfigError(problems)
        return self

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        """A config from `to_dict()` output (a config.json, a checkpoint's "config"). Missing
        fields keep their defaults; unknown sections or fields raise ConfigError (all of them).
        Values are not range-checked here: call validate()."""
        cfg, problems = cls(), []
        if not isinstance(d, dict):
            raise ConfigError([f"a config must be a mapping of sections, got {type(d).__name__}"])
        for section, values in d.items():
            if section not in SECTIONS:
                problems.append(f"unknown config section {section!r}; known: {list(SECTIONS)}")
                continue
            if not isinstance(values, dict):
                problems.append(f"config section {section!r} must be a mapping of fields")
                continue
            sub = getattr(cfg, section)
            for k, v in values.items():
                if k not in _field_names(sub):
                    problems.append(f"unknown config field {section}.{k}")
                    continue
                setattr(sub, k, tuple(v) if _hints(type(sub))[k] is tuple and isinstance(v, list) else v)
        if problems:
            raise ConfigError(problems)
        return cfg


SECTIONS = {"model": ModelConfig, "matcher": MatcherConfig, "loss": LossConfig, "data": DataConfig,
            "train": TrainConfig}


# ---------------------------------------------------------------- validation
# A rule takes the field's (already type-checked) value and returns what is wrong, or None.
Rule = Callable[[Any], Optional[str]]


def _at_least(lo) -> Rule:
    return lambda v: None if v >= lo else f"must be >= {lo}"


def _positive(v) -> Optional[str]:
    return None if v > 0 else "must be > 0"


def _in_range(lo, hi, hi_open: bool = False) -> Rule:
    def rule(v):
        ok = lo <= v < hi if hi_open else lo <= v <= hi
        return None if ok else f"must be in [{lo}, {hi}{')' if hi_open else ']'}"
    return rule


def _fraction(v) -> Optional[str]:
    return None if 0 < v <= 1 else "must be in (0, 1]"


def _one_of(choices) -> Rule:
    return lambda v: None if v in choices else f"expected one of {tuple(choices)}"


def _not_empty(v) -> Optional[str]:
    return None if v.strip() else "must not be empty"


def _scales(v) -> Optional[str]:
    if not v:
        return "must list at least one size, e.g. (480, 512)"
    if not all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in v):
        return "must be positive integers (image sizes in px), e.g. (480, 512)"
    return None


def _device(v) -> Optional[str]:
    return None if re.fullmatch(r"auto|cpu|cuda(:\d+)?", v) else "expected auto, cpu, cuda or cuda:N"


_NON_NEGATIVE = _at_least(0)
_RULES: dict[str, dict[str, Rule]] = {
    "model": {
        "backbone": _one_of(BACKBONES), "backbone_norm": _one_of(BACKBONE_NORMS),
        "num_classes": _at_least(1), "d_model": _at_least(1), "nheads": _at_least(1),
        "num_feature_levels": _in_range(1, 4), "n_points": _at_least(1),
        "num_encoder_layers": _NON_NEGATIVE, "num_decoder_layers": _at_least(1),
        "dim_feedforward": _at_least(1), "dropout": _in_range(0, 1, hi_open=True),
        "num_queries": _at_least(1), "query_pos": _one_of(QUERY_POS), "proposal_nms": _in_range(0, 1), "supervision": _one_of(SUPERVISIONS),
        "o2m_tap": _one_of(O2M_TAPS), "hybrid_num_queries": _at_least(1), "group_num": _at_least(1),
        "deform_backend": _one_of(DEFORM_BACKENDS),
    },
    "matcher": {"cost_class": _NON_NEGATIVE, "cost_bbox": _NON_NEGATIVE, "cost_giou": _NON_NEGATIVE,
                "k": _at_least(1), "tau": _in_range(0, 1), "alpha": _in_range(0, 1),
                "max_pos_fraction": _fraction},
    "loss": {"focal_alpha": _in_range(0, 1), "hybrid_k": _at_least(1),
             **{f.name: _NON_NEGATIVE for f in dataclasses.fields(LossConfig)
                if f.name not in ("focal_alpha", "hybrid_k", "iou_aware")}},   # o2m_last_epoch: >= 0
    "data": {"root": _not_empty, "train_split": _not_empty, "val_split": _not_empty,
             "train_scales": _scales, "val_size": _at_least(1), "max_size": _at_least(1),
             "num_workers": _NON_NEGATIVE, "max_images": _NON_NEGATIVE},
    "train": {"lr": _positive, "lr_backbone": _NON_NEGATIVE, "lr_linear_proj_mult": _NON_NEGATIVE,
              "weight_decay": _NON_NEGATIVE, "clip_max_norm": _NON_NEGATIVE, "batch_size": _at_least(1),
              "epochs": _at_least(1), "lr_drop": _NON_NEGATIVE, "seed": _NON_NEGATIVE,
              "device": _device, "output_dir": _not_empty, "eval_every": _NON_NEGATIVE,
              "log_every": _at_least(1), "max_steps_per_epoch": _NON_NEGATIVE,
              "eval_nms_iou": _in_range(0, 1)},
}


def _cross_field_problems(section: str, sub) -> list[str]:
    """Rules over several fields (only checked once each field alone is fine)."""
    if section != "model":
        return []
    problems = []
    if sub.d_model % sub.nheads:
        problems.append(f"model.d_model={sub.d_model} must be divisible by model.nheads={sub.nheads}")
    if sub.supervision == "group" and sub.group_num < 2:
        problems.append(f"model.group_num={sub.group_num} must be >= 2 for supervision=group")
    return problems


@functools.cache
def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _field_names(sub) -> set[str]:
    return {f.name for f in dataclasses.fields(sub)}


def _type_problem(value, hint) -> Optional[str]:
    """What is wrong with the type of `value` for a field annotated `hint`, or None."""
    if hint is bool:
        return None if isinstance(value, bool) else "must be true or false"
    if hint is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else "must be an integer"
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return "must be a number"
        return None if math.isfinite(value) else "must be a finite number"
    if hint is str:
        return None if isinstance(value, str) else "must be a string"
    if hint is tuple:
        return None if isinstance(value, tuple) else "must be a tuple, e.g. (480, 512)"
    if hint == Optional[str]:
        return None if value is None or isinstance(value, str) else "must be a string or none"
    raise TypeError(f"no type check for annotation {hint!r}")       # a new field type: add it here


def section_problems(section: str, sub) -> list[str]:
    """The problems of one config section (e.g. "model", cfg.model), one line per problem."""
    problems = []
    for name, hint in _hints(type(sub)).items():
        value = getattr(sub, name)
        problem = _type_problem(value, hint)
        if problem is None and name in _RULES.get(section, {}):
            problem = _RULES[section][name](value)
        if problem:
            problems.append(f"{section}.{name}={value!r}: {problem}")
    return problems or _cross_field_problems(section, sub)


def preset(name: str) -> Config:
    """`tiny`: trains on a 2-core CPU in minutes on the embedded data. `r50`: the paper."""
    cfg = Config()
    if name == "r50":
        return cfg
    if name == "tiny":
        cfg.model = ModelConfig(
            backbone="resnet18", backbone_norm="bn", num_classes=4, d_model=128, nheads=8, n_points=4,
            num_encoder_layers=3, num_decoder_layers=4, dim_feedforward=512,
            num_queries=100, hybrid_num_queries=150, group_num=3)
        cfg.data = DataConfig(root="data/shapes", train_scales=(112, 128, 144), val_size=128,
                              max_size=192, random_crop=False, num_workers=0)
        # The trunk starts from random weights here (no downloads), so it learns at a full lr
        # instead of the paper's 0.1x for a pretrained one (the measurements: docs/results.md).
        cfg.train = TrainConfig(lr=4e-4, lr_backbone=1e-3, batch_size=4, epochs=12, lr_drop=10,
                                clip_max_norm=0.1, output_dir="runs/tiny")
        return cfg
    raise ValueError(f"unknown preset {name!r}; expected 'tiny' or 'r50'")


def _parse_value(text: str, hint: Any) -> Any:
    """The value of `text` for a field annotated `hint` (bool, int, float, str, tuple, Optional[str])."""
    if hint is bool:
        low = text.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected a boolean (true/false), got {text!r}")
    if hint is tuple:
        try:
            value = ast.literal_eval(text if text.startswith(("(", "[")) else f"({text},)")
        except (ValueError, SyntaxError):
            value = None
        if not isinstance(value, (tuple, list)):
            raise ValueError(f"expected a tuple such as (480, 512) or 480,512, got {text!r}")
        return tuple(value)
    if hint is int:
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"expected an integer, got {text!r}") from None
    if hint is float:
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"expected a number, got {text!r}") from None
    if hint == Optional[str]:
        return None if text.lower() in ("none", "") else text
    return text


def override_problems(cfg: Config, overrides: list[str]) -> list[str]:
    """Apply `section.field=value` strings in place; returns the ones that could not be applied
    (malformed, unknown section or field, unparsable value), one line each."""
    problems = []
    for item in overrides:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            problems.append(f"override {item!r} is not of the form section.field=value")
            continue
        key, text = item.split("=", 1)
        section, name = key.split(".", 1)
        if section not in SECTIONS:
            problems.append(f"unknown config section {section!r} in {item!r}; known: {list(SECTIONS)}")
            continue
        sub = getattr(cfg, section)
        if name not in _field_names(sub):
            problems.append(f"unknown config field {key!r}; known: {sorted(_field_names(sub))}")
            continue
        try:
            setattr(sub, name, _parse_value(text, _hints(type(sub))[name]))
        except ValueError as e:
            problems.append(f"bad value for {key}: {e}")
    return problems


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Apply `section.field=value` strings (e.g. `model.supervision=o2o`) in place, then validate
    the whole config; raises ConfigError listing every problem (bad overrides and bad fields)."""
    problems = override_problems(cfg, overrides)
    problems += [p for p in cfg.problems() if p not in problems]
    if problems:
        raise ConfigError(problems)
    return cfg
