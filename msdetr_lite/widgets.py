"""Moved to `msdetr_lite.lab.widgets` (the lesson's floor, msdetr_lite/lab/). This name stays for the
notebooks and `from msdetr_lite import widgets`: it is the same module object, not a copy."""
import sys

from .lab import widgets as _moved

sys.modules[__name__] = _moved
