"""``python -m worker_agent`` is ``saga-dispatch agent``."""

from dispatcher.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["agent", *__import__("sys").argv[1:]]))
