"""Which frames of which videos each sampled protocol (src/fvd/recipes.py) feeds the network, seeded and repeatable.

A pick is (video index in its set, frame indices). Real clips start at frame 0 ('start'), at an offset drawn
uniformly from [0, L - n*s + s - 1] ('offset'), or at a draw over every stride-1 window of every video
('window'); frames are offset + k*s for k < n. A video's offset is drawn by a generator seeded by (seed, role,
the video's position), so it does not depend on the other videos; a choice among videos (random videos, windows)
by one seeded by (seed, role); role 0 is the real set (A), 1 the generated set (B).
"""
from __future__ import annotations

import bisect
import itertools
import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from src.clips import InputError
from src.fvd.clips import check_values, load_frames
from src.fvd.inputs import VideoEntry
from src.fvd.protocol import Protocol
from src.fvd.recipes import Recipe
from src.media import FrameStream, VideoError, is_video_file

log = logging.getLogger(__name__)
# A declared frame count decides which windows' frames are converted to RGB, counting from the window a video of
# that length, less this margin, would end with (headers estimated from the duration may be off by a frame or two).
DECLARED_MARGIN = 2
MAX_DECLARED = 1 << 24  # a larger count is not believed (checking it would draw that many numbers up front)


@dataclass(frozen=True)
class Pick:
    """The frames one clip is made of: video `video` of its set, frames `frames` (increasing)."""

    video: int
    frames: tuple[int, ...]


def clip_frames(offset: int, n: int, step: int) -> tuple[int, ...]:
    """offset, offset + step, ..., offset + (n - 1) * step."""
    return tuple(range(offset, offset + n * step, step))


def role_id(role: str) -> int:
    """0 for the real set, 1 for the generated one (part of every seed)."""
    return 0 if role == "real" else 1


def offset_frames(seed: int, role: str, video: int, length: int, frames: int, step: int) -> tuple[int, ...]:
    """A clip at an offset uniform over [0, L - n*s + s - 1], drawn from (seed, role, video).

    The draw is a reservoir sample over the windows in order (window t replaces the choice when the t-th uniform
    number u_t satisfies u_t (t + 1) < 1), so that a video can be read once, keeping two clips, without knowing
    its length in advance (video_clips makes the same draws frame by frame)."""
    windows = max(length - frames * step + step, 1)
    u = np.random.default_rng([seed, role_id(role), video]).random(windows)
    return clip_frames(int(np.flatnonzero(u * np.arange(1, windows + 1) < 1)[-1]), frames, step)


def min_length(recipe: Recipe, role: str, frames: int, step: int) -> int:
    """Frames a video needs: n*s where StyleGAN-V drops shorter real videos, else the (n - 1)*s + 1 a clip spans."""
    return frames * step if role == "real" and recipe.drop_short else (frames - 1) * step + 1


def needs_lengths(recipe: Recipe, role: str) -> bool:
    """Whether picking this role's clips needs every video's frame count first."""
    if role == "generated":
        return recipe.generated_clip != "start"  # a random choice among the videos needs only their number
    return recipe.real_clip != "start" or recipe.drop_short or recipe.real_videos == "random"


def pick_clips(count: int, lengths: Sequence[int] | None, recipe: Recipe, role: str, frames: int, step: int,
               videos: int | None, seed: int, names: Sequence[str] = ()) -> list[Pick]:
    """The clips of one set of `count` videos (frame counts `lengths`, or None when not needed) under `recipe`.

    `role` is 'real' (A) or 'generated' (B); `videos` is N (None: all); `seed` the trial's seed.
    """
    rng = np.random.default_rng([seed, role_id(role)])
    how = recipe.real_clip if role == "real" else recipe.generated_clip
    span = (frames - 1) * step + 1  # frames a clip covers
    eligible = list(range(count))
    if lengths is not None:
        dropping = role == "real" and recipe.drop_short
        minimum = min_length(recipe, role, frames, step)
        short = [i for i in eligible if lengths[i] < minimum]
        if short and dropping:
            eligible = [i for i in eligible if lengths[i] >= minimum]
            log.info("dropped %d real videos shorter than %d frames", len(short), minimum)
            if not eligible:
                raise InputError(f"every video is shorter than {minimum} frames ({frames} frames, step {step})")
        elif short:
            name = names[short[0]] if names else f"video {short[0]}"
            raise InputError(f"{name}: {lengths[short[0]]} frames, shorter than one clip of {frames} frames with "
                             f"step {step} ({span} frames)")
    if how == "window":
        starts = np.cumsum([0] + [lengths[i] - span + 1 for i in eligible])
        total = int(starts[-1])
        chosen = np.sort(rng.choice(total, min(videos or total, total), replace=False))
        owner = np.searchsorted(starts, chosen, side="right") - 1
        return [Pick(eligible[o], clip_frames(int(c - starts[o]), frames, step)) for o, c in zip(owner, chosen)]
    choice = recipe.real_videos if role == "real" else recipe.generated_videos
    if choice == "random" and videos is not None and videos < len(eligible):
        eligible = sorted(int(i) for i in rng.choice(eligible, videos, replace=False))
    else:
        eligible = eligible[:videos]
    if how == "start":
        return [Pick(i, clip_frames(0, frames, step)) for i in eligible]
    return [Pick(i, offset_frames(seed, role, i, lengths[i], frames, step)) for i in eligible]


def warn_if_small(spec: str, count: int, videos: int | None, name: str) -> None:
    """One warning line when a set has fewer videos than the protocol's N (it is then used whole)."""
    if videos is not None and count < videos:
        log.warning("%s: %d videos, fewer than protocol %s's N = %d: the set is used whole", spec, count, name, videos)


def warn_if_few_windows(spec: str, lengths: Sequence[int], frames: int, step: int, videos: int | None,
                        name: str) -> None:
    """One warning line when a set drawn by windows (tats, digan, videogpt) has fewer windows than N (all are used)."""
    span = (frames - 1) * step + 1
    windows = sum(max(n - span + 1, 0) for n in lengths)
    if videos is not None and windows < videos:
        log.warning("%s: %d windows of %d frames, fewer than protocol %s's N = %d: every window is used", spec,
                    windows, span, name, videos)


def video_length(item: VideoEntry, fps: float | None, array: np.ndarray | None = None) -> int:
    """The number of frames of one video (a video file is decoded to count them exactly, none converted to RGB)."""
    if item.row is not None:
        return int(array.shape[1])
    if item.path.suffix.lower() in (".npy", ".npz"):
        return len(load_frames(item, Protocol(fps=fps)))
    return sum(1 for _ in frame_stream(item, fps, None, None, lambda t: False))


def read_pick(item: VideoEntry, frames: tuple[int, ...], fps: float | None,
              array: np.ndarray | None = None) -> np.ndarray:
    """The frames `frames` of one video, (n, H, W, 3) uint8 or float32 in [0, 255]."""
    wanted, kept, length = set(frames), {}, 0
    for t, frame in enumerate(frame_stream(item, fps, array, frames[-1] + 1, wanted.__contains__)):
        length = t + 1
        if t in wanted:  # only the clip's frames are converted and kept
            kept[t] = frame
    if length <= frames[-1]:
        raise InputError(f"{item.name}: {length} frames; the clip needs frame {frames[-1]}")
    return check_values(np.stack([kept[t] for t in frames]), item.name)


class Reservoir:
    """One trial's offset draw over a video read frame by frame: the same numbers as offset_frames draws at once.

    Whether a window would replace the choice depends on its number alone, so it is known before the window's
    frames arrive (accepts): frames no accepted window holds need not be converted."""

    CHUNK = 1024

    def __init__(self, seed: int, role: str, video: int):
        self.rng = np.random.default_rng([seed, role_id(role), video])
        self.accepted: list[int] = []  # windows among the first `known` whose number accepts them, ascending
        self.known = 0
        self.windows = 0
        self.offset: int | None = None
        self.clip: np.ndarray | None = None

    def accepts(self, window: int) -> bool:
        """Whether window `window` (its first frame) replaces the choice when the video is long enough for it."""
        while self.known <= window:
            u = self.rng.random(self.CHUNK)
            self.accepted += (np.flatnonzero(u * np.arange(self.known + 1, self.known + self.CHUNK + 1) < 1)
                              + self.known).tolist()
            self.known += self.CHUNK
        i = bisect.bisect_left(self.accepted, window)
        return i < len(self.accepted) and self.accepted[i] == window

    def last_below(self, windows: int) -> int:
        """The window a video of `windows` complete windows would end with (0 when it has none)."""
        if windows <= 1:
            return 0
        self.accepts(windows - 1)
        return self.accepted[bisect.bisect_left(self.accepted, windows) - 1]

    def draw(self) -> bool:
        """Whether the next complete window replaces the choice (probability 1 / windows so far)."""
        self.windows += 1
        return self.accepts(self.windows - 1)


def frame_stream(item: VideoEntry, fps: float | None, array: np.ndarray | None, limit: int | None,
                 wanted: Callable[[int], bool] | None = None):
    """The frames of one video one at a time (an array's rows, or decoded), at most `limit`; a decoded frame t
    with wanted(t) false comes as None, unconverted (FrameStream.frames)."""
    if item.path.suffix.lower() in (".npy", ".npz"):
        yield from load_frames(item, Protocol(fps=fps), array)[:limit]
        return
    if fps is not None and not is_video_file(item.path):
        raise InputError(f"{item.name}: has no timestamps to resample; --fps applies to video files only "
                         "(use --fps native)")
    try:
        yield from itertools.islice(FrameStream(item.path, fps=fps).frames(wanted), limit)
    except VideoError as exc:
        raise InputError(str(exc)) from None


def declared_length(item: VideoEntry, fps: float | None) -> int | None:
    """The frame count a video file's header declares (at `fps`), a frame folder's file count; None for an array,
    an unreadable header or an implausible count. A hint only: it decides which frames are converted, never which
    clip is taken."""
    if item.path.suffix.lower() in (".npy", ".npz"):
        return None
    try:
        count = FrameStream(item.path, fps=fps).estimated_frames()
    except VideoError:
        return None  # the decoding pass reports it
    return count if 0 < count <= MAX_DECLARED else None


def video_clips(item: VideoEntry, index: int, fps: float | None, role: str, seeds: Sequence[int], frames: int,
                step: int, minimum: int, drop: bool, how: str, array: np.ndarray | None = None
                ) -> tuple[list[tuple[int, ...]], list[tuple[tuple[int, ...], np.ndarray]]] | None:
    """One pass over one video: each trial seed's clip frames ('start' or 'offset'), and the distinct clips as
    (frames, clip) pairs; None when it is shorter than `minimum` frames and `drop` (else InputError naming it).
    Memory stays at one clip span plus a clip per trial, whatever the video's length."""
    span = (frames - 1) * step + 1
    recent: deque = deque(maxlen=span)
    reservoirs = [Reservoir(seed, role, index) for seed in seeds]
    # Windows before the one a video of the declared length would end with are never converted: the last
    # accepted window is the choice, and the video is seldom shorter than declared (then its clip is re-read).
    declared = declared_length(item, fps) if how == "offset" else None
    first = [r.last_below(declared - span + 1 - DECLARED_MARGIN) if declared else 0 for r in reservoirs]
    needed: set[int] = set()

    def wanted(t: int) -> bool:  # asked for frame t once, in order: the windows starting at t are known by then
        if how == "start":
            return t % step == 0
        if any(t >= start and r.accepts(t) for r, start in zip(reservoirs, first)):
            needed.update(range(t, t + span, step))
        if t in needed:
            needed.discard(t)
            return True
        return False

    length = 0
    for frame in frame_stream(item, fps, array, span if how == "start" else None, wanted):
        recent.append(frame)
        length += 1
        if len(recent) == span and how == "offset":
            taking = [r for r in reservoirs if r.draw()]  # a draw for every trial, a copy only when one is taken
            if taking:
                chosen = list(recent)[::step]
                clip = None if any(f is None for f in chosen) else np.stack(chosen)
                for reservoir in taking:
                    reservoir.offset, reservoir.clip = length - span, clip
    if length < minimum:
        if drop:
            return None
        raise InputError(f"{item.name}: {length} frames, shorter than one clip of {frames} frames with step "
                         f"{step} ({minimum} frames)")
    if how == "start":
        first = clip_frames(0, frames, step)
        return [first] * len(seeds), [(first, check_values(np.stack(list(recent)[::step]), item.name))]
    picks = [clip_frames(r.offset, frames, step) for r in reservoirs]
    distinct = {p: r.clip for p, r in zip(picks, reservoirs)}
    for p, clip in distinct.items():
        if clip is None:  # the video is shorter than its header declares: a second pass for this clip
            distinct[p] = read_pick(item, p, fps, array)
    return picks, [(p, check_values(clip, item.name)) for p, clip in distinct.items()]
