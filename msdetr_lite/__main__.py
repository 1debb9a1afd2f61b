"""`python -m msdetr_lite ...` is the `msdetr` command."""
import sys

from msdetr_lite.cli import main

if __name__ == "__main__":
    sys.exit(main())
