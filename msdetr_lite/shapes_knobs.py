"""The difficulty knobs of the synthetic shapes generator and its named variants.

    variant_knobs("dense")                          # Knobs(image_size=192, min_objects=20, ...)
    variant_knobs("coco_like", max_objects=20)      # a variant with one knob overridden
    python -m msdetr_lite.data.synthetic --variant dense --out data/shapes_dense
    msdetr data shapes --variant coco_like --max-objects 20 --out data/shapes_coco_like

Every knob is a field of `Knobs`; its defaults are the embedded data/shapes set, which stays
byte-identical to what the generator wrote before the knobs existed. A variant is a named set
of knob values; knobs given explicitly override the variant's. Bad values raise a UsageError
(a ValueError; `msdetr_lite.errors`) with one line per bad value, each naming its knob.

This module is light on purpose (no numpy / torch): the `msdetr` parser builds its `data
shapes` flags from it (`add_knob_arguments`) without importing the generator.
"""
from __future__ import annotations

import argparse
import math
import numbers
from dataclasses import asdict, dataclass, field, fields

from msdetr_lite.errors import UsageError

# Class names in label order; `num_classes=k` uses the first k. The first four are the
# embedded set's. All are told apart by shape only (colour is random), at any size >= 6 px.
SHAPE_NAMES = ("circle", "square", "triangle", "cross", "star", "ring", "diamond", "ell", "tee",
               "semicircle", "arrow", "bar", "crescent", "frame")
MAX_OBJECTS = 40          # objects per image, at most
MIN_SIZE = 6.0            # px: smaller shapes stop being told apart


def _knob(default, help: str, *aliases: str):
    return field(default=default, metadata={"help": help, "aliases": aliases})


@dataclass(frozen=True)
class Knobs:
    """The generator's difficulty knobs (defaults: the embedded data/shapes set)."""
    image_size: int = _knob(128, "image height in px", "--size")
    aspect_jitter: float = _knob(0.125, "width varies by up to this fraction of the height, in [0, 1)")
    min_objects: int = _knob(3, "fewest objects drawn per image (fewer land when they do not fit)")
    max_objects: int = _knob(10, f"most objects per image, at most {MAX_OBJECTS}")
    num_classes: int = _knob(4, f"classes: the first N of {', '.join(SHAPE_NAMES)} (N <= {len(SHAPE_NAMES)})")
    min_size: float = _knob(12.0, f"smallest shape size in px, >= {MIN_SIZE:g} (sizes are log-uniform)")
    max_size: float = _knob(48.0, "largest shape size in px, <= image_size")
    max_iou: float = _knob(0.35, "occlusion: highest box IoU of a new object with an earlier one, in (0, 1]")
    max_cover: float = _knob(0.35, "occlusion: largest share of an earlier object's box a later object may "
                                    "cover, in (0, 1]")
    max_inside: float = _knob(0.5, "occlusion: largest share of a new object's own box that may lie on an "
                                   "earlier one, in (0, 1]")

    def problems(self) -> list[str]:
        """One line per bad value, each naming its knob; empty if all are fine."""
        out = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type == "int" and (isinstance(value, bool) or not isinstance(value, numbers.Integral)):
                out.append(f"{f.name} must be an integer, got {value!r}")
            elif isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                out.append(f"{f.name} must be a finite number, got {value!r}")
        if out:
            return out

        def need(ok: bool, text: str) -> None:
            if not ok:
                out.append(text)
        need(0 <= self.aspect_jitter < 1, f"aspect_jitter must be in [0, 1), got {self.aspect_jitter}")
        need(self.min_objects >= 0, f"min_objects must be >= 0, got {self.min_objects}")
        need(1 <= self.max_objects <= MAX_OBJECTS,
             f"max_objects must be in 1..{MAX_OBJECTS}, got {self.max_objects}")
        need(self.min_objects <= self.max_objects,
             f"min_objects={self.min_objects} is more than max_objects={self.max_objects}")
        need(1 <= self.num_classes <= len(SHAPE_NAMES),
             f"num_classes must be in 1..{len(SHAPE_NAMES)} (the shapes there are), got {self.num_classes}")
        need(self.min_size >= MIN_SIZE, f"min_size must be >= {MIN_SIZE:g} px, got {self.min_size}")
        need(self.min_size <= self.max_size, f"min_size={self.min_size} is more than max_size={self.max_size}")
        need(self.image_size >= self.max_size,
             f"image_size={self.image_size} is smaller than max_size={self.max_size}: the shapes would not fit")
        for name in ("max_iou", "max_cover", "max_inside"):
            value = getattr(self, name)
            need(0 < value <= 1, f"{name} must be in (0, 1], got {value}")
        return out

    def check(self) -> "Knobs":
        """self, or a UsageError (a ValueError) listing every bad value (each naming its knob)."""
        bad = self.problems()
        if bad:
            raise UsageError(*bad)
        return self

    def is_default(self) -> bool:
        return self == Knobs()

    def as_dict(self) -> dict:
        return asdict(self)


KNOB_NAMES = tuple(f.name for f in fields(Knobs))

# Named variants: knob values that differ from the defaults. Every variant stays cheap to train on
# a CPU (images <= 192 px). data/README.md tabulates their statistics.
VARIANTS: dict[str, dict] = {
    "default": {},
    "dense": {"image_size": 192, "min_objects": 20, "max_objects": 40, "min_size": 8.0, "max_size": 32.0},
    "many_classes": {"num_classes": len(SHAPE_NAMES)},
    "small": {"min_size": 6.0, "max_size": 24.0},
    "occluded": {"max_iou": 0.6, "max_cover": 0.6, "max_inside": 0.9},
    "coco_like": {"image_size": 192, "num_classes": len(SHAPE_NAMES), "min_objects": 5, "max_objects": 30,
                  "min_size": 6.0, "max_size": 96.0, "max_iou": 0.5, "max_cover": 0.5, "max_inside": 0.75},
}


def variant_knobs(variant: str = "default", **overrides) -> Knobs:
    """The checked knobs of `variant` with `overrides` (knob=value; None = the variant's value)."""
    if variant not in VARIANTS:
        raise UsageError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    unknown = sorted(set(overrides) - set(KNOB_NAMES))
    if unknown:
        raise UsageError(f"unknown knob(s) {', '.join(unknown)}; the knobs are {', '.join(KNOB_NAMES)}")
    given = {k: v for k, v in overrides.items() if v is not None}
    knobs = Knobs(**{**VARIANTS[variant], **given}).check()
    # plain int / float (numpy scalars, 12 vs 12.0): the same knobs give the same bytes and json
    return Knobs(**{f.name: (int if f.type == "int" else float)(getattr(knobs, f.name)) for f in fields(Knobs)})


# --- command line ------------------------------------------------------------------------------
def add_knob_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """--variant and one flag per knob (--image-size, --max-objects, ...; default: the variant's)."""
    parser.add_argument("--variant", default="default", choices=list(VARIANTS), metavar="NAME",
                        help=f"named set of knob values: {', '.join(VARIANTS)} (default: default, the "
                             "embedded set; data/README.md describes them); the flags below override it")
    defaults = Knobs()
    for f in fields(Knobs):
        flag = "--" + f.name.replace("_", "-")
        parser.add_argument(flag, *f.metadata["aliases"], dest=f.name, default=None,
                            type=int if f.type == "int" else float,
                            help=f"{f.metadata['help']} (default: the variant's; {getattr(defaults, f.name):g} "
                                 f"in 'default')")
    return parser


def knobs_from_args(args: argparse.Namespace) -> dict:
    """{"variant": ..., knob: value for each flag given}, checked (UsageError naming the knob)."""
    given = {name: getattr(args, name) for name in KNOB_NAMES if getattr(args, name, None) is not None}
    variant_knobs(args.variant, **given)
    return {"variant": args.variant, **given}
