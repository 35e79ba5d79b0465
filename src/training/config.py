"""A run's settings: RunConfig (train.py's options, saved as RUN/config.json) and how they are checked.

A new run's options and a resumed run's config.json go through the same checks; a config.json is
also checked key by key against the field types, so a hand-edited file fails in one line naming it.
"""
from __future__ import annotations

import json
import math
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path

from src.model import BLOCK_NAMES

LOGITS_BLOCK = BLOCK_NAMES.index("conv3d_0c_1x1")
RESUMABLE = ("device", "workers")  # where and how fast a resumed run computes, not what it computes
CHOICES = {"modality": ("rgb", "flow", "joint"), "optimizer": ("sgd", "adamw"), "schedule": ("cosine", "step"),
           "cache_features": ("auto", "on", "off"), "cache_dtype": ("float16", "float32"),
           "precision": ("auto", "fp32", "bf16", "fp16", "plain")}


class TrainingError(RuntimeError):
    """A run that cannot start or go on; the message says why and what to do."""


@dataclass
class RunConfig:
    """Everything that defines a run; saved as config.json and restored by --resume."""

    data: str = "data/videos/pre-processed"
    out: str | None = None
    weights: str = "rgb_scratch"
    flow_weights: str | None = None  # default: flow_scratch when obtainable, else cross-modality from --weights
    modality: str = "rgb"
    freeze: int = 15
    clip_len: int = 64
    crop: int = 224
    sample_rate: int | None = None
    batch_size: int = 8
    epochs: int = 10
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: str = "cosine"
    warmup_epochs: float = 1.0
    step_epochs: int = 5
    step_gamma: float = 0.1
    label_smoothing: float = 0.0
    dropout: float = 0.5
    bn_momentum: float = 0.1
    accum_steps: int = 1
    clip_grad: float = 0.0
    amp: bool = False
    precision: str = "auto"  # the frozen blocks' inference path (src.inference), or "plain"
    seed: int = 0
    device: str = "auto"
    workers: int = 0
    balanced: bool = False
    no_flip: bool = False
    cache_features: str = "auto"
    cache_views: int = 4
    cache_dtype: str = "float16"
    patience: int = 0
    reverse_pairs: str = ""  # "a:b,c:d": a clip of a played backwards becomes b (and b becomes a), p = 0.5
    skip_bad_items: bool = False  # leave out items whose arrays hold NaN/inf (each reported) instead of stopping
    multi_label: bool = False  # sigmoid + binary cross-entropy; set automatically when items have several labels
    classes: list[str] = field(default_factory=list)
    # how pre-process.py made the arrays (from its manifest), so prediction prepares inputs the same way
    input_size: int | None = None  # short side of the stored frames
    input_fps: float | None = 25.0  # None: the sources' own rate
    input_sample_rate: int = 1
    flow_algorithm: str = "tvl1"

    def check(self, source: str | Path | None = None) -> None:
        """Refuse settings that cannot give a meaningful run, in one sentence each.

        `source` is the config.json being resumed: its messages then name the file and the key, not the option.
        """
        def name(key: str) -> str:
            return f"{source}: {key}" if source else "--" + key.replace("_", "-")

        for key, allowed in CHOICES.items():
            if getattr(self, key) not in allowed:
                raise TrainingError(f"{name(key)} {getattr(self, key)!r}: choose one of {', '.join(allowed)}")
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise TrainingError(f"{name(f.name)} {value}: must be a finite number")
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "clip_len": self.clip_len,
                    "crop": self.crop, "accum_steps": self.accum_steps, "lr": self.lr}
        for key, value in positive.items():
            if not value > 0:
                raise TrainingError(f"{name(key)} {value}: must be positive")
        if self.cache_views < 1:
            raise TrainingError(f"{name('cache_views')} {self.cache_views}: must be at least 1")
        for key in ("patience", "label_smoothing", "clip_grad", "warmup_epochs", "weight_decay", "workers"):
            if getattr(self, key) < 0:
                raise TrainingError(f"{name(key)} {getattr(self, key)}: must not be negative")
        if not 0 <= self.dropout < 1:
            raise TrainingError(f"{name('dropout')} {self.dropout}: choose 0 <= p < 1")
        if self.label_smoothing >= 1:
            raise TrainingError(f"{name('label_smoothing')} {self.label_smoothing}: choose 0 <= s < 1")
        try:
            parse_reverse_pairs(self.reverse_pairs)
        except ValueError as exc:
            raise TrainingError(f"{name('reverse_pairs')} {self.reverse_pairs!r}: {exc}") from None
        if not 0 <= self.freeze <= LOGITS_BLOCK:
            raise TrainingError(f"{name('freeze')} {self.freeze}: choose 0..{LOGITS_BLOCK} (block {LOGITS_BLOCK + 1} "
                                "is the classifier, which must train)")

    def resumed_with(self, given: dict[str, object], run_dir: str | Path) -> list[str]:
        """Apply the options given with --resume that may change (RESUMABLE) and say so; refuse the others where
        they differ from the run's own (TrainingError naming them): the rest of the run would not match its start."""
        differ = {k: v for k, v in given.items() if getattr(self, k) != v}
        fixed = [k for k in differ if k not in RESUMABLE]
        if fixed:
            said = ", ".join(f"--{k.replace('_', '-')} {differ[k]!r} (the run has {getattr(self, k)!r})" for k in fixed)
            raise TrainingError(f"--resume {run_dir}: {said}: cannot change when a run is resumed; leave "
                                f"{'it' if len(fixed) == 1 else 'them'} out, or start a new run with --out")
        notes = [f"--resume: --{k.replace('_', '-')} {v!r} instead of the run's {getattr(self, k)!r}"
                 for k, v in differ.items()]
        for key, value in differ.items():
            setattr(self, key, value)
        return notes

    @staticmethod
    def load(run_dir: str | Path) -> RunConfig:
        """The config.json of a run folder, checked as strictly as a new run's options (TrainingError naming it)."""
        path = Path(run_dir) / "config.json"
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise TrainingError(f"{run_dir}: no config.json; is this a train.py run folder?") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise TrainingError(f"{path}: cannot be read ({exc})") from None
        except json.JSONDecodeError as exc:
            raise TrainingError(f"{path}: not valid JSON ({exc})") from None
        if not isinstance(saved, dict):
            raise TrainingError(f"{path}: holds a JSON {type(saved).__name__}, not train.py's settings object")
        known = {f.name for f in fields(RunConfig)}
        unknown = [key for key in saved if key not in known]
        if unknown:
            raise TrainingError(f"{path}: unknown key{'s' if len(unknown) > 1 else ''} "
                                f"{', '.join(map(repr, unknown))} (not a train.py setting)")
        hints = typing.get_type_hints(RunConfig)
        for key, value in saved.items():
            if not fits(value, hints[key]):
                raise TrainingError(f"{path}: {key} is {json.dumps(value)}, expected {type_name(hints[key])}")
        cfg = RunConfig(**saved)  # keys an older version did not write keep their defaults
        cfg.check(path)
        return cfg


def parse_reverse_pairs(text: str) -> list[tuple[str, str]]:
    """'a:b,c:d' -> [('a', 'b'), ('c', 'd')] ('a:a': a clip of a reversed is still a); ValueError naming the fault."""
    pairs, seen = [], set()
    for part in filter(None, (p.strip() for p in text.split(","))):
        names = [n.strip() for n in part.split(":")]
        if len(names) != 2 or not all(names):
            raise ValueError(f"{part!r} is not a pair; write classes as a:b,c:d")
        for n in set(names):
            if n in seen:
                raise ValueError(f"class {n!r} is in two pairs")
            seen.add(n)
        pairs.append((names[0], names[1]))
    return pairs


def reverse_map(text: str, classes: list[str]) -> dict[int, int]:
    """Label -> label of the clip played backwards, both ways for each pair of --reverse-pairs."""
    unknown = [n for pair in parse_reverse_pairs(text) for n in pair if n not in classes]
    if unknown:
        raise TrainingError(f"--reverse-pairs {text!r}: {', '.join(map(repr, unknown))} not among the dataset's "
                            f"classes ({', '.join(classes)})")
    mapping = {}
    for a, b in parse_reverse_pairs(text):
        mapping[classes.index(a)], mapping[classes.index(b)] = classes.index(b), classes.index(a)
    return mapping


def fits(value: object, hint: object) -> bool:
    """Whether a JSON value has a RunConfig field's type (an int counts as a float; a bool is never a number)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(fits(value, option) for option in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if typing.get_origin(hint) is list:
        (inner,) = typing.get_args(hint)
        return isinstance(value, list) and all(fits(v, inner) for v in value)
    if hint is bool:
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if hint is float:
        return isinstance(value, (int, float))
    return isinstance(value, hint)


def type_name(hint: object) -> str:
    """A field type in words: 'an integer', 'a number or null', 'a list of strings'."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(type_name(option) for option in typing.get_args(hint))
    if typing.get_origin(hint) is list:
        return "a list of " + type_name(typing.get_args(hint)[0]).split(" ", 1)[1] + "s"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string",
            type(None): "null"}.get(hint, str(hint))
