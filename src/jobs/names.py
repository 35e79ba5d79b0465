"""The one rule for names that become paths: a label, class, video stem or item name is exactly one file or folder
name inside the output folder, or it is refused; a path read from a file stays inside the folder it is relative to."""
from __future__ import annotations

import os
from pathlib import Path

MAX_NAME_BYTES = 255  # the longest file name ext4, XFS, APFS and NTFS accept


def path_component(name: str, what: str = "name", separators: str = "/\\") -> str:
    """`name` itself if it can be one file or folder name; ValueError saying why not (`what` names it, e.g. 'label').

    `separators`: the characters that would split it into folders; both '/' and '\\' (Windows) by default, for
    names read from files; the name of a file that exists on this system need only avoid '/'.
    """
    if not name or not name.strip():
        raise ValueError(f"empty {what}")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise ValueError(f"{what} {name!r} has a control character; it cannot be a file or folder name")
    if name in (".", ".."):
        raise ValueError(f"{what} {name!r} names a folder itself, not an entry in it")
    if any(c in name for c in separators):
        raise ValueError(f"{what} {name!r} has a path separator; it must be a single file or folder name")
    if len(name.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
        raise ValueError(f"{what} {name[:40]!r}... is longer than a file name may be ({MAX_NAME_BYTES} bytes)")
    return name


def inside(root: Path, path: str | Path) -> bool:
    """Whether `path` (relative to `root`, or absolute) names something inside `root`, judged on the names alone:
    '..' and absolute paths that leave it do not; symbolic links inside `root` are the user's own and are trusted."""
    base = os.path.normpath(os.path.abspath(root))
    target = os.path.normpath(os.path.join(base, os.fspath(path)))
    return target == base or target.startswith(base.rstrip(os.sep) + os.sep)
