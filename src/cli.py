"""Command-line helpers the scripts share: one-line usage errors, the inference options, checks of outputs and numbers."""
from __future__ import annotations

import argparse
import math
from pathlib import Path

from src.clips import InputError
from src.inference import PRECISIONS
from src.jobs import check_writable


class Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line and exit code 1, like every other user error here."""

    def error(self, message: str):
        self.exit(1, f"error: {message} (see --help)\n")


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (KeyError's quotes dropped)."""
    text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def add_inference_arguments(parser: argparse.ArgumentParser, precision: str = "auto", plain: bool = False,
                            precision_help: str | None = None) -> None:
    """The --device, --precision, --plain (or, where the plain model is the default, --fast) and --compile options
    shared by the inference scripts (`precision_help`: a script's own --precision help, e.g. what it refuses)."""
    parser.add_argument("--device", default=None, help="cpu, cuda, mps (default: best available)")
    parser.add_argument("--precision", choices=PRECISIONS, default=precision,
                        help=(precision_help or "fast inference path: auto picks bf16/fp16 only where this hardware "
                              "makes it faster (bf16 CPUs, CUDA), else the fp32 fast path") + " (default: %(default)s)")
    if plain:
        parser.add_argument("--fast", action="store_true",
                            help="run the fast path at --precision instead of the plain float32 model (the default)")
    else:
        parser.add_argument("--plain", action="store_true", help="run the plain float32 model instead of the fast path")
    parser.add_argument("--compile", action="store_true",
                        help="also wrap the fast path in torch.compile: slow to start, pays off over many clips")


def chosen_precision(args: argparse.Namespace) -> str | None:
    """The precision asked for by add_inference_arguments' options; None for the plain model."""
    if hasattr(args, "fast"):
        return args.precision if args.fast else None
    return None if args.plain else args.precision


def parse_fps(text: str) -> float | None:
    """'native' -> None, '29.97' -> 29.97 (argparse type: finite and positive)."""
    if text == "native":
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of frames per second or 'native', got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive finite number, got {text}")
    return value


def check_output(path: str | Path, option: str, overwrite: bool = False) -> None:
    """Raise InputError unless `path` can be written (and is new, or `overwrite`), before the work, not after."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{option} {path}: is a folder; give a file name")
    if path.exists() and not overwrite:
        raise InputError(f"{option} {path}: exists; pass --overwrite to replace it")
    try:
        check_writable(path, create_folders=False)
    except OSError as exc:
        raise InputError(f"{option} {exc}") from None


def check_positive(value: int | None, option: str) -> None:
    """Raise InputError unless an integer option is unset or at least 1."""
    if value is not None and value < 1:
        raise InputError(f"{option} must be 1 or more, got {value}")
