"""The lesson's floor: what only the notebooks, the demo and the studies use.

    zoo        trained models at hand: the notebooks' four schemes, shipped or trained once, cached, reloaded
    shipped    the models that ship in weights/ (fp16, verified by checksum, config and an output fingerprint)
    side_by_side   several `msdetr train` subprocesses at once, one thread each, a progress bar per run
    render     the notebooks executed into HTML and README thumbnails (`make render`)
    samples    plain functions of a model and one sample: outputs, assignments, attention, candidates
    widgets    the notebooks' interactive panels, built from `samples` and `msdetr_lite.viz`
    readings   sentences and tables built from measured numbers (NMS-free vs with NMS, costs, runs)
    regime_readings   the same for the regime study's JSON (`msdetr_lite.regime`, `bench/regime.py`)
    compare    `msdetr compare`: runs side by side, as PNGs and summary tables
    demo       `make demo`: data, two trainings, evaluation, report.md

Everything here reads the floors below (the method: models, matching, losses, data, ops; training
and measuring: engine, evaluation, analysis, runs) and draws through `msdetr_lite.viz`; nothing
below imports from here (docs/design.md, tests/test_layout.py). `python -m msdetr_lite.lab` trains,
lists and renders (lab/__main__.py). The older names `msdetr_lite.zoo`, `.samples`, `.widgets` and
`.report` still work.
"""
from pathlib import Path
from typing import Union

# the repository (runs/, docs/, bench/results/, notebooks/): where the lab reads and writes its files
PROJECT_ROOT = Path(__file__).resolve().parents[2]


def relative(path: Union[str, Path]) -> str:
    """`path` as the notebooks print it: relative to the project root when it lies inside it (a
    rendered page must not carry the absolute path of the checkout it was rendered in), else as
    given."""
    p = Path(path).expanduser()
    try:
        return str(p.resolve().relative_to(PROJECT_ROOT)) if p.is_absolute() else str(p)
    except ValueError:
        return str(p)
