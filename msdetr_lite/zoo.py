"""Moved to `msdetr_lite.lab.zoo` (the cached models) and `msdetr_lite.lab.render` (the notebooks
into HTML), on the lesson's floor (msdetr_lite/lab/). This name stays for the notebooks and
`from msdetr_lite import zoo`, with everything the old module offered, and
`python -m msdetr_lite.zoo ...` runs `python -m msdetr_lite.lab ...`."""
from .lab.render import NOTEBOOK_DIR, THUMBNAIL_ENV, render, thumbnail_dir  # noqa: F401
from .lab.zoo import *  # noqa: F401,F403
from .lab.zoo import (BUILD_SCHEMES, FAST_ENV, NMS_EVAL_FILE, PROJECT_ROOT, ZOO_ENV, ZOO_FILE,  # noqa: F401
                      ZOO_VERSION, _lock)

if __name__ == "__main__":
    from .lab.__main__ import main

    raise SystemExit(main())
