"""``python -m dispatcher`` is the ``saga-dispatch`` command."""

from dispatcher.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
