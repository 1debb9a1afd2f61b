"""Moved to `msdetr_lite.lab.samples` (the lesson's floor, msdetr_lite/lab/). This name stays for
`from msdetr_lite import samples`: it is the same module object, not a copy."""
import sys

from .lab import samples as _moved

sys.modules[__name__] = _moved
