"""What every top-level script's --help tells a newcomer: each option's default, and nothing untrue."""
from __future__ import annotations

import argparse
import importlib.util

import pytest

from tests.conftest import REPO

SCRIPTS = sorted(p.name for p in REPO.glob("*.py") if p.name not in ("hubconf.py",))


class Parsed(Exception):
    """Raised instead of parsing: the script's parser, built by its own main(), is all the test needs."""


def script_parser(name: str, monkeypatch: pytest.MonkeyPatch) -> argparse.ArgumentParser:
    """The ArgumentParser a top-level script's main() builds (stopped before it parses anything)."""
    built = []

    def capture(self, *args, **kwargs):
        built.append(self)
        raise Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    monkeypatch.setattr("sys.argv", [name])
    spec = importlib.util.spec_from_file_location(name.removesuffix(".py").replace("-", "_"), REPO / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.raises(Parsed):
        module.main()
    return built[0]


def options_without_their_default(parser: argparse.ArgumentParser) -> list[str]:
    """Options (of every subcommand too) with a default that their help does not show."""
    missing = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            missing += [f"{name} {m}" for name, sub in action.choices.items() for m in options_without_their_default(sub)]
        elif not (isinstance(action, (argparse._HelpAction, argparse._StoreConstAction)) or action.default in (
                None, False, (), [], argparse.SUPPRESS) or "default" in (action.help or "").lower()):
            missing.append("/".join(action.option_strings) or action.dest)
    return missing


def test_the_scripts_are_all_checked():
    assert {"train.py", "pre-process.py", "predict.py", "evaluate.py", "fvd.py", "i3d_pt_profiling.py",
            "export.py", "visualize.py"} <= set(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_help_shows_each_default(script, monkeypatch):
    # --frame_nb, --batch, --repeats (profiling), evaluate.py --crops, export.py's and visualize.py's showed none
    assert options_without_their_default(script_parser(script, monkeypatch)) == []


def test_help_texts_say_what_is_accepted_and_where_things_are(monkeypatch, capsys):
    fvd = script_parser("fvd.py", monkeypatch).format_help()
    assert "protocol tf accepts only fp32" in " ".join(fvd.split())
    assert 'np.save("zeros.npy", z)' in fvd and 'np.save("ones.npy", z + 255)' in fvd  # how to make the example
    profiling = script_parser("i3d_pt_profiling.py", monkeypatch).format_help()
    assert "src/inference.py" not in profiling and "src/inference/fast.py" in " ".join(profiling.split())
    assert "pip install" not in profiling and "line_profiler" in (REPO / "requirements.txt").read_text()
