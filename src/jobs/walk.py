"""Walking a folder tree for a job's inputs without looping: a folder reached again (a symlink back into a folder
already visited, `sub/back -> ..`) is not searched again."""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path


def _entries(folder: Path, sort_key: Callable[[Path], object]) -> Iterator[Path]:
    return iter(sorted(folder.iterdir(), key=sort_key))


def walk_files(root: str | Path, want_file: Callable[[Path], bool],
               want_dir: Callable[[Path], bool] = lambda folder: False,
               skip: Callable[[Path], bool] = lambda path: path.name.startswith("."),
               sort_key: Callable[[Path], object] = lambda path: path.name) -> list[Path]:
    """Depth first, each folder's entries in `sort_key` order: the files under `root` for which `want_file` holds
    and the folders for which `want_dir` holds (taken whole, not searched); `skip` leaves entries out (dot-names).

    Every real folder is searched once (by its resolved path), so a symlink loop cannot repeat files.
    ValueError when `root` is not a folder; the OSError of a folder that cannot be listed is raised as it is.
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root}: not a folder")
    visited = {os.path.realpath(root)}
    found: list[Path] = []
    stack = [_entries(root, sort_key)]
    while stack:
        entry = next(stack[-1], None)
        if entry is None:
            stack.pop()
        elif skip(entry):
            continue
        elif entry.is_dir():
            if want_dir(entry):
                found.append(entry)
                continue
            real = os.path.realpath(entry)
            if real not in visited:
                visited.add(real)
                stack.append(_entries(entry, sort_key))
        elif want_file(entry):
            found.append(entry)
    return found
