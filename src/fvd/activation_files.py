"""Per-clip activations saved with what made them, so that any metric is recomputed without the network, and
shards computed on several machines are merged into one set.

A file is an .npz (read with allow_pickle=False) holding `activations` (m, d) float32, `clip_index` (m,) int64
(each clip's position in the whole set's clip list) and `fvd_activations` (JSON: the protocol, network, weights
and the sha256 of their tensors, the set, its role, every clip of the shard [video, frames or clip number], the
whole set's clip count, the clips of each trial as positions, the shard i/n, the toolkit version).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from src.clips import InputError
from src.fvd.protocol import Protocol
from src.jobs import atomic_write

KEY = "fvd_activations"  # the member that marks an activations file
FORMAT = 1


@dataclass
class ActivationSet:
    """Activations of (a shard of) one set: rows in clip order, and the metadata that says what they are."""

    activations: np.ndarray  # (m, d) float32
    clip_index: np.ndarray  # (m,) positions in the whole set's clip list
    protocol: Protocol
    weights_sha256: str
    spec: str
    role: str  # "real" (A) or "generated" (B)
    clips: list  # [video name, frames list or clip number] per row
    total: int  # clips of the whole set
    trials: list[list[int]]  # per trial, the positions of its clips
    shard: tuple[int, int] = (1, 1)
    meta: dict = field(default_factory=dict)

    def trial(self, t: int) -> np.ndarray:
        """The activations of trial t's clips, in that trial's order."""
        if len(self.clip_index) != self.total:
            raise InputError(f"{self.spec}: shard {self.shard[0]}/{self.shard[1]} holds {len(self.clip_index)} of "
                             f"the set's {self.total} clips; give every shard's file, comma-separated")
        order = np.empty(self.total, np.int64)
        order[self.clip_index] = np.arange(len(self.clip_index))
        return self.activations[order[np.asarray(self.trials[t], np.int64)]]


def is_activations_file(path: str | Path) -> bool:
    """True for an .npz written by --save-activations."""
    path = Path(path)
    if path.suffix.lower() != ".npz" or not path.is_file():
        return False
    try:
        with np.load(path, allow_pickle=False) as z:
            return KEY in z.files
    except (OSError, ValueError, EOFError):
        return False


def save_activations(data: ActivationSet, path: str | Path, toolkit_version: str = "unknown") -> None:
    """Write `data` to an .npz at `path` through a temporary name."""
    meta = {"format": FORMAT, "protocol": data.protocol.as_dict(), "weights_sha256": data.weights_sha256,
            "spec": data.spec, "role": data.role, "clips": data.clips, "total": data.total, "trials": data.trials,
            "shard": list(data.shard), "toolkit_version": toolkit_version}
    with atomic_write(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, activations=np.asarray(data.activations, np.float32),
                 clip_index=np.asarray(data.clip_index, np.int64), **{KEY: np.array(json.dumps(meta))})


def load_activations(path: str | Path) -> ActivationSet:
    """One file written by `save_activations`; InputError naming it if it is not one."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z[KEY]))
            acts, index = z["activations"].astype(np.float32), z["clip_index"].astype(np.int64)
        data = ActivationSet(acts, index, Protocol.from_dict(meta["protocol"]), str(meta["weights_sha256"]),
                             str(meta["spec"]), str(meta["role"]), list(meta["clips"]), int(meta["total"]),
                             [list(map(int, t)) for t in meta["trials"]], tuple(int(v) for v in meta["shard"]),
                             {"toolkit_version": meta.get("toolkit_version", "unknown")})
    except (OSError, ValueError, KeyError, TypeError, EOFError) as exc:
        raise InputError(f"{path}: not a readable activations file ({type(exc).__name__}: {exc})") from None
    m = len(index)
    if acts.ndim != 2 or len(acts) != m or len(data.clips) != m or m < 1 or index.min() < 0 or \
            index.max() >= data.total or len(np.unique(index)) != m:
        raise InputError(f"{path}: inconsistent activations file ({acts.shape} activations, {m} clip positions, "
                         f"{len(data.clips)} clips, {data.total} in the set)")
    return data


def merge_activations(parts: list[ActivationSet], names: list[str]) -> ActivationSet:
    """Several shards of one set as one: same protocol, network, weights, set and shard count, each clip once."""
    first = parts[0]
    for part, name in zip(parts[1:], names[1:]):
        differences = first.protocol.differences(part.protocol)
        if differences:
            raise InputError(f"{name}: activations of another protocol than {names[0]} ({'; '.join(differences)})")
        for what, mine, theirs in (("weights", first.weights_sha256, part.weights_sha256), ("set", first.spec,
                                   part.spec), ("role", first.role, part.role), ("clip count", first.total,
                                   part.total), ("shard count", first.shard[1], part.shard[1]),
                                   ("trials", first.trials, part.trials)):
            if mine != theirs:
                raise InputError(f"{name}: {what} differs from {names[0]}'s; shards merge only from one run over "
                                 "one set")
    shards = sorted(p.shard[0] for p in parts)
    if len(set(shards)) != len(shards):
        raise InputError(f"{', '.join(names)}: shard {next(s for s in shards if shards.count(s) > 1)}/"
                         f"{first.shard[1]} given twice")
    index = np.concatenate([p.clip_index for p in parts])
    if len(np.unique(index)) != len(index):
        raise InputError(f"{', '.join(names)}: shards overlap (a clip appears in two files)")
    if len(index) != first.total:
        missing = sorted(set(range(1, first.shard[1] + 1)) - set(shards))
        raise InputError(f"{', '.join(names)}: {len(index)} of the set's {first.total} clips (missing shard(s) "
                         f"{', '.join(f'{i}/{first.shard[1]}' for i in missing) or 'none'})")
    clips = [c for p in parts for c in p.clips]
    return ActivationSet(np.concatenate([p.activations for p in parts]), index, first.protocol,
                         first.weights_sha256, first.spec, first.role, clips, first.total, first.trials,
                         (1, 1), first.meta)


def open_activations(spec: str) -> ActivationSet | None:
    """The activations a spec names (one file, or shards comma-separated), or None when it names no such file."""
    names = [s for s in spec.split(",") if s]
    if not names or not all(is_activations_file(n) for n in names):
        if len(names) > 1:
            bad = next(n for n in names if not is_activations_file(n))
            raise InputError(f"{bad}: not an activations file from --save-activations (only such files are "
                             "merged, comma-separated)")
        return None
    parts = [load_activations(n) for n in names]
    return parts[0] if len(parts) == 1 and parts[0].shard == (1, 1) else merge_activations(parts, names)
