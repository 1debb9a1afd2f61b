"""A training run folder, read in one place; the loss-key names, defined once.

    run = load_run("runs/demo/ms")
    run.config["model"]["supervision"]           # config.json
    run.steps, run.epochs                        # metrics.jsonl: "step" and "epoch" records
    run.eval                                     # eval.json (None before training finished)
    run.loss("o2o", "giou", layer=-1)            # (steps, values) of one logged loss series
    run.epoch_evals()                            # [(epoch, evaluation of that epoch)]
    run.convergence()                            # AP, AP with NMS, duplicates per decoder layer and epoch

A run folder is what `engine.train` writes (docs/design.md):

    config.json     the Config as a dict
    metrics.jsonl   one JSON record per line: {"type": "step", "epoch", "iter", "step", "losses",
                    "step_time", "peak_mem_mb", ...} every `train.log_every` steps and
                    {"type": "epoch", "epoch", "step", "steps", "losses" (epoch means),
                    "epoch_time", "eval" (optional), ...} after every epoch
    eval.json       the final evaluation: {"final", "layers", "layer_ids", ...}

A file of a run folder that cannot be read as described (not UTF-8, not JSON, records of the
wrong shape) is a `RunFileError` naming the file and line. A last line of metrics.jsonl cut short
(a kill or a full disk during a write) is skipped with a warning (`TornRecordWarning`).

Loss dicts (`SetCriterion`, logged as they are optimised, i.e. weighted) name every term
`loss_{cls|bbox|giou}_{o2o|o2m|enc}_{layer}` (the encoder proposals have no layer) and hold
their sum as `loss`. `loss_key` writes such a name, `parse_loss_key` reads one; nothing else in
the package spells them out.
"""
from __future__ import annotations

import json
import numbers
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, NamedTuple, Optional, Sequence, Union

from msdetr_lite.errors import UserError

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
EVAL_FILE = "eval.json"

LOSS_TERMS = ("cls", "bbox", "giou")       # focal classification, box L1, GIoU
BRANCHES = ("o2o", "o2m", "enc")           # one-to-one, one-to-many, two-stage encoder proposals
TOTAL_KEY = "loss"                          # the summed, optimised loss
CONVERGENCE_KEYS = ("AP", "AP_nms", "duplicates")   # Run.convergence: per decoder layer and epoch
_KEY = re.compile(r"^loss_(cls|bbox|giou)_(o2o|o2m|enc)(?:_(\d+))?$")

__all__ = ["CONFIG_FILE", "METRICS_FILE", "EVAL_FILE", "LOSS_TERMS", "BRANCHES", "TOTAL_KEY", "CONVERGENCE_KEYS", "LossKey",
           "loss_key", "parse_loss_key", "loss_value", "read_metrics", "Run", "load_run", "as_run", "RunFileError",
           "TornRecordWarning", "read_json_object"]


class RunFileError(UserError, ValueError):
    """A file of a run folder that cannot be read as a run's (the message names file and line)."""


class TornRecordWarning(UserWarning):
    """metrics.jsonl ends in a line cut short (skipped)."""


# ---------------------------------------------------------------- loss-key names
class LossKey(NamedTuple):
    term: str                 # cls | bbox | giou
    branch: str               # o2o | o2m | enc
    layer: Optional[int]      # decoder layer (0-based); None for the encoder proposals


def loss_key(term: str, branch: str, layer: Optional[int] = None) -> str:
    """The name of one loss term: `loss_{term}_{branch}_{layer}` (`loss_{term}_enc` for the encoder)."""
    if term not in LOSS_TERMS:
        raise ValueError(f"loss term {term!r}; expected one of {LOSS_TERMS}")
    if branch not in BRANCHES:
        raise ValueError(f"branch {branch!r}; expected one of {BRANCHES}")
    if branch == "enc":
        if layer is not None:
            raise ValueError(f"the encoder proposals have no decoder layer (got layer={layer})")
        return f"loss_{term}_enc"
    if layer is None or int(layer) < 0:
        raise ValueError(f"branch {branch!r} needs a decoder layer index >= 0, got {layer!r}")
    return f"loss_{term}_{branch}_{int(layer)}"


def parse_loss_key(name: str) -> Optional[LossKey]:
    """`LossKey(term, branch, layer)` of a loss-term name; None for any other key (`loss`, ...)."""
    m = _KEY.match(name)
    if m is None or (m.group(2) == "enc") != (m.group(3) is None):
        return None
    return LossKey(m.group(1), m.group(2), None if m.group(3) is None else int(m.group(3)))


def loss_value(losses: Mapping[str, float], branch: Optional[str] = None, term: Optional[str] = None,
               layer: Optional[int] = None) -> Optional[float]:
    """One number of a loss dict.

    branch None: the total `loss`. Otherwise the sum of that branch's terms `term` (None = cls +
    bbox + giou) over decoder layer `layer` (None = all layers; negative counts from the last
    layer present). The encoder branch has no layers: `layer` is ignored for it. None when the
    dict has no such term (e.g. an o2o-only run's o2m branch).
    """
    if branch is None:
        value = losses.get(TOTAL_KEY)
        return None if value is None else float(value)
    if branch not in BRANCHES:
        raise ValueError(f"branch {branch!r}; expected one of {BRANCHES} (or None for the total)")
    if term is not None and term not in LOSS_TERMS:
        raise ValueError(f"loss term {term!r}; expected one of {LOSS_TERMS} (or None for their sum)")
    keys = [(k, v) for k, v in ((parse_loss_key(name), v) for name, v in losses.items())
            if k is not None and k.branch == branch and (term is None or k.term == term)]
    if not keys:
        return None
    if layer is not None and branch != "enc":
        if layer < 0:
            layers = sorted({k.layer for k, _ in keys})
            if -layer > len(layers):
                return None
            layer = layers[layer]
        keys = [(k, v) for k, v in keys if k.layer == layer]
        if not keys:
            return None
    return float(sum(v for _, v in keys))


# ---------------------------------------------------------------- the run folder
def _text(path: Path) -> str:
    try:
        return path.read_text()
    except UnicodeDecodeError as e:
        raise RunFileError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from None


def _is_number(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _numbers(d) -> bool:
    return isinstance(d, dict) and all(_is_number(v) or v is None for v in d.values())


def _eval_problem(ev) -> Optional[str]:
    """What is wrong with an evaluation ({"final": {metric: number}, "layers": [{...}], ...}), or None."""
    if not isinstance(ev, dict):
        return f"an evaluation must be an object, got {type(ev).__name__}"
    if "final" in ev and not _numbers(ev["final"]):
        return "'final' must map metric names to numbers"
    if "layers" in ev and not (isinstance(ev["layers"], list) and all(_numbers(m) for m in ev["layers"])):
        return "'layers' must be a list of {metric: number}"
    if ev.get("nms") is not None:
        return _eval_problem(ev["nms"])
    return None


# the fields of a record by type: (required, check, what it must be); the accessors of `Run` index
# the required ones, the others are checked where present
_INT = (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer")
_RECORD_FIELDS = {
    "step": {"epoch": (True, *_INT), "iter": (True, *_INT), "step": (True, *_INT),
             "losses": (False, _numbers, "an object of numbers")},
    "epoch": {"epoch": (True, *_INT), "step": (False, *_INT), "losses": (False, _numbers, "an object of numbers"),
              "epoch_time": (False, _is_number, "a number"), "steps": (False, *_INT)},
}


def _record_problem(r) -> Optional[str]:
    if not isinstance(r, dict):
        return f"a record must be a JSON object, got {type(r).__name__}"
    kind = r.get("type")
    for key, (required, ok, what) in (_RECORD_FIELDS.get(kind, {}) if isinstance(kind, str) else {}).items():
        if (required or key in r) and not ok(r.get(key)):
            return f"{kind} record: {key!r} must be {what}, got {r.get(key)!r}"
    if r.get("eval") is not None:
        return _eval_problem(r["eval"])
    return None


def read_metrics(path: Union[str, Path]) -> list[dict]:
    """The records of a metrics.jsonl file, in file order (blank lines skipped). A last line that
    starts a record but is not JSON (a write cut short) is skipped with a TornRecordWarning; any
    other line that is not a well-formed record is a RunFileError naming it."""
    path = Path(path)
    records = []
    lines = _text(path).splitlines()
    last = max((n for n, line in enumerate(lines, 1) if line.strip()), default=0)
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            if n == last and line.lstrip().startswith("{"):     # a record's start, nothing after it
                warnings.warn(TornRecordWarning(f"{path}:{n}: skipped a torn last line (a write cut short, e.g. "
                                                f"by a kill or a full disk): {line[:40]!r}..."), stacklevel=2)
                continue
            raise RunFileError(f"{path}:{n} is not a JSON record ({e.msg})") from None
        problem = _record_problem(record)
        if problem:
            raise RunFileError(f"{path}:{n}: {problem}")
        records.append(record)
    return records


def _config_problem(cfg: dict) -> Optional[str]:
    return None if all(isinstance(v, dict) for v in cfg.values()) else "every config section must be an object"


def read_json_object(path: Union[str, Path], check=None) -> dict:
    """A file holding one JSON object (config.json, eval.json) whose `check(value)` (-> what is
    wrong, or None) passes; RunFileError naming the file otherwise."""
    path = Path(path)
    try:
        value = json.loads(_text(path))
    except json.JSONDecodeError as e:
        raise RunFileError(f"{path} is not valid JSON ({e})") from None
    problem = (None if isinstance(value, dict) else f"must hold a JSON object, not {type(value).__name__}") \
        or (check(value) if check else None)
    if problem:
        raise RunFileError(f"{path}: {problem}")
    return value


@dataclass
class Run:
    """A training run: its config, metrics records and final evaluation.

    `dir` is None for a run built from records in memory (`Run.from_records`).
    """
    name: str
    records: list[dict]
    config: dict = field(default_factory=dict)
    eval: Optional[dict] = None
    dir: Optional[Path] = None

    @classmethod
    def from_records(cls, records: Iterable[Mapping], name: str = "run", config: Optional[dict] = None,
                     eval: Optional[dict] = None) -> "Run":
        return cls(name=name, records=[dict(r) for r in records], config=dict(config or {}), eval=eval)

    @property
    def steps(self) -> list[dict]:
        """The "step" records (every `train.log_every` steps)."""
        return [r for r in self.records if r.get("type") == "step"]

    @property
    def epochs(self) -> list[dict]:
        """The "epoch" records (one per finished epoch)."""
        return [r for r in self.records if r.get("type") == "epoch"]

    @property
    def supervision(self) -> Optional[str]:
        return self.config.get("model", {}).get("supervision")

    def loss(self, branch: Optional[str] = None, term: Optional[str] = None, layer: Optional[int] = None,
             per: str = "step") -> tuple[list, list[float]]:
        """(xs, values) of one loss series (see `loss_value` for branch / term / layer).

        per="step": the logged steps, xs = global step numbers; per="epoch": the epoch means,
        xs = epochs. Records without that term are skipped (empty lists if none has it).
        """
        if per not in ("step", "epoch"):
            raise ValueError(f"per={per!r}; expected 'step' or 'epoch'")
        xs, ys = [], []
        for r in self.steps if per == "step" else self.epochs:
            v = loss_value(r.get("losses") or {}, branch, term, layer)
            if v is not None:
                xs.append(r["step"] if per == "step" else r["epoch"])
                ys.append(v)
        return xs, ys

    def step_epochs(self) -> list[float]:
        """Each step record on a fractional epoch axis: epoch - 1 + (iter + 1) / steps of that epoch."""
        steps_in = {r["epoch"]: r["steps"] for r in self.epochs if "steps" in r}
        fallback = max((r["iter"] + 1 for r in self.steps), default=1)
        return [r["epoch"] - 1 + (r["iter"] + 1) / steps_in.get(r["epoch"], fallback) for r in self.steps]

    def epoch_evals(self) -> list[tuple[int, dict]]:
        """[(epoch, the evaluation run after it)] for the epochs that were evaluated."""
        return [(r["epoch"], r["eval"]) for r in self.epochs if r.get("eval")]

    def convergence(self) -> dict:
        """Every decoder layer after every evaluated epoch, the grid behind "convergence per decoder
        layer": {"epochs": [e], "nms_iou": the NMS IoU of the evaluations (None if none scored
        NMS), and per measure a list over decoder layers of a list over `epochs`: "AP" (NMS-free,
        as the detector runs), "AP_nms" (after class-wise NMS; None where an epoch was scored
        without it), "duplicates" (confident queries per image on an object a higher-scored
        query already claimed; None where not recorded)}. APs are fractions, as COCOeval gives them."""
        evals = self.epoch_evals()
        n_layers = max((len(ev.get("layers") or []) for _, ev in evals), default=0)
        iou = next((ev["nms"]["iou"] for _, ev in evals if ev.get("nms")), None)

        def at(ev: Mapping, key: str, layer: int) -> Optional[float]:
            if key == "AP":
                layers = ev.get("layers") or []
            elif key == "AP_nms":
                nms = ev.get("nms") or {}
                layers = (nms.get("layers") or []) if nms and nms.get("iou") == iou else []
            else:
                layers = (ev.get("duplicates") or {}).get("per_image") or []
            if layer >= len(layers):
                return None
            value = layers[layer] if key == "duplicates" else layers[layer].get("AP")
            return None if value is None or value < 0 else float(value)

        return {"epochs": [e for e, _ in evals], "nms_iou": iou,
                **{key: [[at(ev, key, l) for _, ev in evals] for l in range(n_layers)]
                   for key in CONVERGENCE_KEYS}}

    def final_eval(self) -> Optional[dict]:
        """eval.json, else the last epoch's evaluation, else None."""
        if self.eval:
            return self.eval
        evals = self.epoch_evals()
        return evals[-1][1] if evals else None


def load_run(run_dir: Union[str, Path], name: Optional[str] = None) -> Run:
    """Read a run folder (metrics.jsonl required; config.json and eval.json if present)."""
    run_dir = Path(run_dir)
    metrics = run_dir / METRICS_FILE
    if not metrics.is_file():
        raise FileNotFoundError(f"{run_dir} has no {METRICS_FILE}: not a training run folder")
    config, ev = run_dir / CONFIG_FILE, run_dir / EVAL_FILE
    return Run(name=name or run_dir.name, records=read_metrics(metrics),
               config=read_json_object(config, _config_problem) if config.is_file() else {},
               eval=read_json_object(ev, _eval_problem) if ev.is_file() else None, dir=run_dir)


def as_run(run: Union[Run, str, Path, Sequence[Mapping]], name: str = "run") -> Run:
    """A Run from a Run, a run folder, or a list of metrics records (as plotting functions accept)."""
    if isinstance(run, Run):
        return run
    if isinstance(run, (str, Path)):
        return load_run(run)
    return Run.from_records(run, name=name)
