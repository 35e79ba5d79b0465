"""Sharding a job over machines: 'i/n' from the command line or a Slurm array, and every n-th item from the i-th."""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")


def parse_shard(text: str) -> tuple[int, int]:
    """'2/4' -> (2, 4); ValueError for anything else."""
    try:
        i, n = (int(p) for p in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard must look like i/n (e.g. 2/4), got {text!r}") from None
    if not 1 <= i <= n:
        raise ValueError(f"--shard {text}: need 1 <= i <= n")
    return i, n


def shard_from_env(env: dict[str, str] | None = None) -> tuple[int, int] | None:
    """(i, n) from SLURM_ARRAY_TASK_ID / SLURM_ARRAY_TASK_COUNT (offset by SLURM_ARRAY_TASK_MIN), else None."""
    env = os.environ if env is None else env
    if "SLURM_ARRAY_TASK_ID" not in env or "SLURM_ARRAY_TASK_COUNT" not in env:
        return None
    try:
        task, count = int(env["SLURM_ARRAY_TASK_ID"]), int(env["SLURM_ARRAY_TASK_COUNT"])
        first = int(env.get("SLURM_ARRAY_TASK_MIN", "0"))
    except ValueError:
        raise ValueError("SLURM_ARRAY_TASK_ID / SLURM_ARRAY_TASK_COUNT are not integers") from None
    i = task - first + 1
    if not 1 <= i <= count:
        raise ValueError(f"SLURM array task {task} (min {first}) is outside a count of {count}; "
                         "use --array=0-(N-1) or pass --shard i/n")
    return i, count


def take_shard(items: Sequence[T], shard: tuple[int, int], key: Callable[[T], object]) -> list[T]:
    """Shard i of n: every n-th item of `items` sorted by `key`, from the i-th (the same on every machine)."""
    i, n = shard
    return sorted(items, key=key)[i - 1::n]
