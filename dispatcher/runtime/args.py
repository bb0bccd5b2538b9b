"""What every role's command line shares: its parser, and flags with environment fallbacks."""

from __future__ import annotations

import argparse
import os

from dispatcher.runtime.logs import LOG_FORMATS


def role_parser(command: str, description: str) -> argparse.ArgumentParser:
    """A role's own parser (``saga-dispatch COMMAND --help``). It accepts ``--log-format``, which
    the CLI passes on, so a role that starts children gives them the same format."""
    parser = argparse.ArgumentParser(prog=f"saga-dispatch {command}", description=description)
    parser.add_argument("--log-format", choices=LOG_FORMATS, default="auto", help=argparse.SUPPRESS)
    return parser


def env(name: str, default: str) -> str:
    """The environment's value for ``name`` (the pod manifests set these), else ``default``."""
    return os.environ.get(name, default)
