"""metrics.jsonl records in the engine's format, with losses and APs whose values are known.

Step s (1-based, global) logs o2o terms 1/s + layer, o2m terms 2/s + layer (not for `o2o`),
encoder terms 0.5 and `loss` 10/s; an epoch record repeats its last step's losses and, every
`eval_every` epochs, an evaluation with AP 0.1 * epoch (final) and 0.05 * epoch * (layer + 1).
"""
from __future__ import annotations


def records(supervision: str = "ms", epochs: int = 3, steps_per_epoch: int = 4, layers: int = 2,
            eval_every: int = 1) -> list[dict]:
    recs, step = [], 0
    for e in range(1, epochs + 1):
        for it in range(steps_per_epoch):
            step += 1
            losses = {"loss": 10.0 / step}
            for l in range(layers):
                for t in ("cls", "bbox", "giou"):
                    losses[f"loss_{t}_o2o_{l}"] = 1.0 / step + l
                    if supervision != "o2o":
                        losses[f"loss_{t}_o2m_{l}"] = 2.0 / step + l
            for t in ("cls", "bbox", "giou"):
                losses[f"loss_{t}_enc"] = 0.5
            recs.append({"type": "step", "epoch": e, "iter": it, "step": step, "losses": losses,
                         "step_time": 0.1, "peak_mem_mb": 100.0})
        rec = {"type": "epoch", "epoch": e, "step": step, "steps": steps_per_epoch, "losses": recs[-1]["losses"],
               "epoch_time": 1.0}
        if e % eval_every == 0:
            rec["eval"] = {"final": {"AP": 0.1 * e, "AP50": 0.2 * e},
                           "layers": [{"AP": 0.05 * e * (l + 1), "AP50": 0.1 * e} for l in range(layers)],
                           "layer_ids": list(range(layers))}
        recs.append(rec)
    return recs
