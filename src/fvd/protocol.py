"""What an FVD number depends on besides the videos: the named protocol and where clips are taken.

`--protocol tf` is google-research's frechet_video_distance.py: every frame squashed to 224x224 by
TF1's resize_bilinear, 2x/255-1, the 400 time-averaged logits of DeepMind's rgb_scratch I3D, and
TF-GAN's Fréchet distance in float64. The clip options say which frames of each video go in; the
reference itself takes whatever (N, T, H, W, 3) batch it is given, so they are part of the protocol,
and two sets' statistics are comparable only when all of it is the same. The other names are the sampled
protocols of src/fvd/recipes.py: they choose their own clips (seed, --frames, --subsample), and every
protocol records its network (the batch-norm epsilon).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from src.fvd.recipes import PROTOCOL_NAMES
from src.model import MIN_FRAMES

PROTOCOLS = PROTOCOL_NAMES
SIZE = 224  # every frame is resized to SIZE x SIZE (above the network's MIN_SIZE, 193)


@dataclass(frozen=True)
class Protocol:
    """The protocol name and the clip choice: clip length, clips per video, first start, stride, fps."""

    name: str = "tf"
    frames: int | None = 16  # None: each video whole (from `start` on)
    clips_per_video: int = 1
    start: int | None = 0  # None: random starts drawn with `seed`
    stride: int | None = None  # between clip starts; None: `frames` (back to back)
    seed: int | None = None  # only with random starts
    fps: float | None = None  # None: native frame rate
    subsample: int | None = None  # frame step within a clip (sampled protocols; None: the protocol's own)
    network: str = "tf"  # batch-norm epsilon: "tf" 1e-3, "videogpt-eps" 1e-5

    def __post_init__(self) -> None:
        problems = []
        if self.name not in PROTOCOLS:
            problems.append(f"unknown protocol {self.name!r} (known: {', '.join(PROTOCOLS)})")
        elif self.name != "tf":
            if self.frames is None or self.clips_per_video != 1 or self.start != 0 or self.stride is not None:
                problems.append(f"protocol {self.name} picks its own clips: --frames all, --clips-per-video, "
                                "--start and --stride apply to --protocol tf only")
            if self.seed is None:
                problems.append(f"protocol {self.name} needs a seed")
        elif self.subsample is not None:
            problems.append("--subsample (the frame step within a clip) applies to the sampled protocols, not tf")
        if self.subsample is not None and self.subsample < 1:
            problems.append(f"--subsample must be 1 or more, got {self.subsample}")
        if self.frames is not None and self.frames < MIN_FRAMES:
            problems.append(f"--frames {self.frames} is too short: FVD needs clips of at least {MIN_FRAMES} frames "
                            "(the TF network's (2, 7, 7) VALID logits pool needs 2 time steps after 8x temporal "
                            "downsampling)")
        if self.clips_per_video < 1:
            problems.append(f"--clips-per-video must be 1 or more, got {self.clips_per_video}")
        if self.frames is None and self.clips_per_video != 1:
            problems.append("--frames all takes each video whole: --clips-per-video must be 1")
        if self.frames is None and self.start is None:
            problems.append("--frames all takes each video whole: random starts do not apply")
        if self.start is not None and self.start < 0:
            problems.append(f"--start must be 0 or more, got {self.start}")
        if self.stride is not None:
            if self.stride < 1:
                problems.append(f"--stride must be 1 or more, got {self.stride}")
            elif self.start is None or self.clips_per_video == 1 or self.frames is None:
                problems.append("--stride is the distance between clip starts: it needs --clips-per-video 2 or more "
                                "with a fixed --start")
        if self.name == "tf" and (self.seed is None) != (self.start is not None):
            problems.append("--seed applies only to --start random (and random starts need a seed)")
        if self.fps is not None and not self.fps > 0:
            problems.append(f"--fps must be positive, got {self.fps}")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def clip_stride(self) -> int:
        """Frames between the starts of consecutive clips of one video."""
        return self.stride or self.frames or 0

    def frames_needed(self) -> int | None:
        """The fewest frames a video must have under fixed starts (None for whole videos or random starts)."""
        if self.frames is None or self.start is None:
            return None
        return self.start + (self.clips_per_video - 1) * self.clip_stride + self.frames

    def as_dict(self) -> dict:
        """The protocol as JSON-ready values (the key that statistics files are compared by)."""
        d = asdict(self)
        d["frames"] = "all" if self.frames is None else self.frames
        d["start"] = "random" if self.start is None else self.start
        spaced = self.frames is not None and self.start is not None and self.clips_per_video > 1
        d["stride"] = self.clip_stride if spaced else None
        d["fps"] = "native" if self.fps is None else self.fps
        if self.name == "tf" and self.subsample is None:  # as before these fields existed
            del d["subsample"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Protocol":
        """The inverse of `as_dict`."""
        return cls(name=d["name"], frames=None if d["frames"] == "all" else int(d["frames"]),
                   clips_per_video=int(d["clips_per_video"]), start=None if d["start"] == "random" else int(d["start"]),
                   stride=None if d.get("stride") is None else int(d["stride"]),
                   seed=None if d.get("seed") is None else int(d["seed"]),
                   fps=None if d["fps"] == "native" else float(d["fps"]),
                   subsample=None if d.get("subsample") is None else int(d["subsample"]),
                   network=str(d.get("network", "tf")))

    def describe(self) -> str:
        """One line: e.g. 'tf: 1 clip of 16 frames per video from frame 0, native fps'."""
        what = "each video whole" if self.frames is None else \
            f"{self.clips_per_video} clip{'s' if self.clips_per_video > 1 else ''} of {self.frames} frames per video"
        if self.start is None:
            where = f" at random starts (seed {self.seed})"
        else:
            where = f" from frame {self.start}"
            if self.clips_per_video > 1:
                where += f", every {self.clip_stride} frames"
        rate = "native fps" if self.fps is None else f"{self.fps:g} fps"
        if self.name != "tf":
            step = "" if self.subsample is None else f", every {self.subsample}th frame"
            return (f"{self.name}: clips of {self.frames} frames{step} (seed {self.seed}), {rate}, "
                    f"network {self.network}")
        net = "" if self.network == "tf" else f", network {self.network}"
        return f"{self.name}: {what}{where}, {rate}{net}"

    def differences(self, other: "Protocol") -> list[str]:
        """'key this vs that' for each setting in which `other` differs."""
        mine, theirs = self.as_dict(), other.as_dict()
        return [f"{key} {theirs.get(key)} vs {mine.get(key)}" for key in {**mine, **theirs}
                if mine.get(key) != theirs.get(key)]
