"""Moved to the lesson's floor (msdetr_lite/lab/), split by job:

    lab/readings.py         sentences and tables from measured numbers (NMS-free vs with NMS, costs, runs)
    lab/regime_readings.py  the same for the regime study's JSON, and its per-epoch figure
    lab/compare.py          `msdetr compare`: runs side by side, as files
    lab/demo.py             `make demo`: two trainings, evaluation, report.md

This name stays for the notebooks, `bench/regime.py` and the CLI (`from msdetr_lite import report`,
`report.describe_nms_comparison(...)`): it re-exports what the old module offered. Patch a constant
(REGIME_JSON, OVERHEAD_JSON, ...) in the module that defines it, not here.
"""
from .lab.compare import LOSS_PANELS, compare_runs  # noqa: F401
from .lab.demo import run_demo  # noqa: F401
from .lab.readings import (AP_KEYS, FAST_NOTICE, NMS_IOU, OVERHEAD_JSON, OVERHEAD_MEASURED_JSON,  # noqa: F401
                           SHORT_NAMES, TIE_AP, benchmark_costs, candidate_table, describe_nms_comparison,
                           fast_notice, nms_rows, summarize_run, summary_table)
from .lab.regime_readings import (REGIME_JSON, REGIME_MEASURED_JSON, describe_epoch_gap,  # noqa: F401
                                  describe_o2m_switched_off, describe_schedule, load_regime,
                                  regime_epoch_duplicates, regime_epoch_gaps, regime_epochs_figure, regime_lr_drops)
