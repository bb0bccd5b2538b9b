"""``python -m worker_agent`` is ``saga-dispatch agent``."""

import sys

from dispatcher.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["agent", *sys.argv[1:]]))
