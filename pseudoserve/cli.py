"""The one `pseudoserve` command and its subcommands.

Each subcommand lives with the part of the system it belongs to and exposes two functions: one
that adds its arguments to an argparse parser (cheap: no heavy imports), and one that runs it and
returns the exit code (imports onnxruntime/torch lazily, so `pseudoserve serve` never loads torch).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from pseudoserve import __version__

# name -> (module, add-arguments function, run function, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str, str, str]] = {
    "serve": ("service.cli", "add_serve_arguments", "run_serve", "run the inference server"),
    "trainer": ("trainer.cli_online", "add_trainer_arguments", "run_trainer", "run the trainer sidecar"),
    "status": ("trainer.cli_online", "add_status_arguments", "run_status", "print a trainer's status as JSON"),
    "fit": ("trainer.cli_offline", "add_fit_arguments", "run_fit", "self-train offline from files to an ONNX model"),
    "bootstrap": ("trainer.cli_offline", "add_bootstrap_arguments", "run_bootstrap", "train version 1 from labels alone and publish it"),
    "rollback": ("trainer.cli_offline", "add_rollback_arguments", "run_rollback", "serve an earlier published version again"),
    "demo": ("pseudoserve.demo", "add_demo_arguments", "run_demo", "run the end-to-end demo on scikit-learn digits"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pseudoserve", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"pseudoserve {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, add_fn, _, help_text) in SUBCOMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        getattr(importlib.import_module(module), add_fn)(sub_parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    module, _, run_fn, _ = SUBCOMMANDS[args.command]
    try:
        return int(getattr(importlib.import_module(module), run_fn)(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
