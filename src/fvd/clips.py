"""Where clips are taken from each video, and reading them: the frames that go into FVD, as they are.

Clip k of a video starts at `start + k * stride` (deterministic), or at a start drawn uniformly from
the video's frames with a generator seeded by (seed, the video's position in its set), so a run is
repeatable. A video too short for its clips is refused with one line naming it: a clip is never
padded, looped or shrunk. Values stay as given (uint8, or float in [0, 255]); resizing comes later.
"""
from __future__ import annotations

import itertools

import numpy as np

from src.clips import InputError
from src.fvd.inputs import VideoEntry
from src.fvd.protocol import MIN_FRAMES, Protocol
from src.media import FrameStream, VideoError

# The reference asserts its preprocessed input lies in [-1.001, 1.001], i.e. pixels in [-0.1275, 255.1275].
LOW, HIGH = -0.001 * 255 / 2, 255 + 0.001 * 255 / 2
# Float clips whose values all lie within [-1.1, 1.1] are taken for [0, 1] or [-1, 1] pixels (a unit slip),
# overshoot included (a generator's [0, 1] output often strays a little past its ends).
UNIT_HIGH = 1.1


def clip_starts(n_frames: int, protocol: Protocol, index: int, name: str) -> list[int]:
    """The first frame of each clip of a video with `n_frames` frames (the `index`-th video of its set)."""
    if protocol.frames is None:
        if n_frames - protocol.start < MIN_FRAMES:
            after = f" ({n_frames - protocol.start} from --start {protocol.start})" if protocol.start else ""
            raise InputError(f"{name}: {n_frames} frames{after}; FVD needs clips of at least {MIN_FRAMES} frames")
        return [protocol.start]
    if protocol.start is None:
        if n_frames < protocol.frames:
            raise InputError(f"{name}: {n_frames} frames, shorter than one clip of --frames {protocol.frames}")
        distinct = n_frames - protocol.frames + 1
        if protocol.clips_per_video > distinct:  # checked before drawing: K draws take K integers of memory
            starts = "start" if distinct == 1 else "starts"
            raise InputError(f"{name}: {n_frames} frames allow at most {distinct} distinct clip {starts} of --frames "
                             f"{protocol.frames}; --clips-per-video {protocol.clips_per_video} asks for more")
        rng = np.random.default_rng([protocol.seed, index])
        return sorted(int(s) for s in rng.integers(0, n_frames - protocol.frames + 1, protocol.clips_per_video))
    needed = protocol.frames_needed()
    if n_frames < needed:
        raise InputError(f"{name}: {n_frames} frames; {describe_need(protocol)} needs {needed} "
                         "(clips are never padded or shrunk; use --frames all for whole videos"
                         f" of at least {MIN_FRAMES} frames)")
    return [protocol.start + k * protocol.clip_stride for k in range(protocol.clips_per_video)]


def describe_need(protocol: Protocol) -> str:
    """The options that decide how many frames a video needs, as typed."""
    words = [f"--frames {protocol.frames}"]
    if protocol.clips_per_video > 1:
        words += [f"--clips-per-video {protocol.clips_per_video}", f"--stride {protocol.clip_stride}"]
    if protocol.start:
        words.append(f"--start {protocol.start}")
    return " ".join(words)


def check_values(frames: np.ndarray, name: str) -> np.ndarray:
    """Frames as uint8 or float32, after checking float values lie in [0, 255] as the reference requires."""
    if frames.dtype == np.uint8:
        return frames
    if frames.dtype.kind not in "fiu":
        raise InputError(f"{name}: dtype {frames.dtype}; expected uint8 or float pixels in [0, 255]")
    frames = np.asarray(frames, dtype=np.float32)
    low, high = float(frames.min()), float(frames.max())
    if not (np.isfinite(low) and np.isfinite(high)) or low < LOW or high > HIGH:
        raise InputError(f"{name}: values span [{low:g}, {high:g}]; FVD takes pixels in [0, 255]")
    if 0 < high <= UNIT_HIGH and low >= -UNIT_HIGH:
        raise InputError(f"{name}: values span [{low:g}, {high:g}], which looks like [0, 1] or [-1, 1]; "
                         "FVD takes pixels in [0, 255] (multiply [0, 1] values by 255)")
    return frames


def open_stream(item: VideoEntry, protocol: Protocol) -> FrameStream:
    """The frame stream of a video file or frame folder at the protocol's rate."""
    stream = FrameStream(item.path, fps=protocol.fps)
    if protocol.fps is not None and stream.kind != "video":
        raise InputError(f"{item.name}: a {stream.kind} has no timestamps to resample; --fps applies to video "
                         "files only (use --fps native)")
    return stream


def decode(item: VideoEntry, protocol: Protocol, limit: int | None) -> np.ndarray:
    """The first `limit` frames (all when None) of a video file or frame folder, (T, H, W, 3) uint8."""
    try:
        frames = list(itertools.islice(open_stream(item, protocol), limit))
    except VideoError as exc:
        raise InputError(str(exc)) from None
    if not frames:
        raise InputError(f"{item.name}: no frames could be decoded")
    return np.stack(frames)


def count_frames(item: VideoEntry, protocol: Protocol) -> int:
    """How many frames a video file or frame folder yields, by a decoding pass that converts and keeps none."""
    try:
        return sum(1 for _ in open_stream(item, protocol).frames(lambda index: False))
    except VideoError as exc:
        raise InputError(str(exc)) from None


def decode_kept(item: VideoEntry, protocol: Protocol, keep: set[int] | None, first: int, limit: int | None
                ) -> tuple[dict[int, np.ndarray], int]:
    """Frames `keep` (all from `first` on when None) of the first `limit` frames of a video file or frame folder,
    by index, and how many frames were decoded: only the frames clips use are held in memory."""
    kept: dict[int, np.ndarray] = {}
    count = 0

    def wanted(index: int) -> bool:
        return (index in keep) if keep is not None else index >= first

    try:
        for count, frame in enumerate(itertools.islice(open_stream(item, protocol).frames(wanted), limit), 1):
            if frame is not None:  # the others were decoded but not converted
                kept[count - 1] = frame
    except VideoError as exc:
        raise InputError(str(exc)) from None
    if not count:
        raise InputError(f"{item.name}: no frames could be decoded")
    return kept, count


def decode_clips(item: VideoEntry, protocol: Protocol, index: int) -> np.ndarray:
    """The clips of the `index`-th video of a set from a video file or frame folder, decoding only as far as the
    last clip reaches and keeping only the frames the clips use."""
    if protocol.frames is None:  # whole videos from `start` on
        kept, count = decode_kept(item, protocol, None, protocol.start, None)
        starts = clip_starts(count, protocol, index, item.name)
        length = count - starts[0]
    else:
        length = protocol.frames
        if protocol.start is None:  # random starts need the frame count before any frame is kept
            starts = clip_starts(count_frames(item, protocol), protocol, index, item.name)
        else:
            starts = [protocol.start + k * protocol.clip_stride for k in range(protocol.clips_per_video)]
        wanted = {s + j for s in starts for j in range(length)}
        kept, count = decode_kept(item, protocol, wanted, 0, max(starts) + length)
        if protocol.start is not None:
            starts = clip_starts(count, protocol, index, item.name)  # the same starts; refuses a short video
        elif count < max(starts) + length:
            raise InputError(f"{item.name}: {count} frames decoded on a second pass, fewer than the first pass counted")
    first = kept[starts[0]]
    clips = np.empty((len(starts), length, *first.shape), first.dtype)
    for k, s in enumerate(starts):
        for j in range(length):
            clips[k, j] = kept[s + j]
    return clips


def load_frames(item: VideoEntry, protocol: Protocol, array: np.ndarray | None = None) -> np.ndarray:
    """All the frames of one video that its clips can reach, (T, H, W, 3)."""
    if item.path.suffix.lower() not in (".npy", ".npz"):
        return decode(item, protocol, protocol.frames_needed())
    if protocol.fps is not None:
        raise InputError(f"{item.name}: an array has no timestamps to resample; --fps applies to video files only")
    if item.row is not None:
        return array[item.row]
    try:
        frames = np.load(item.path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise InputError(f"{item.name}: not a readable .npy clip ({exc})") from None
    if frames.ndim == 5 and frames.shape[0] == 1:
        frames = frames[0]
    if frames.ndim != 4 or frames.shape[-1] != 3 or min(frames.shape) == 0:
        raise InputError(f"{item.name}: shape {frames.shape}; expected a clip (T, H, W, 3)")
    return frames


def read_clips(item: VideoEntry, protocol: Protocol, index: int, array: np.ndarray | None = None) -> np.ndarray:
    """The clips of the `index`-th video of a set, (K, F, H, W, 3) uint8 or float32 in [0, 255]."""
    if item.path.suffix.lower() not in (".npy", ".npz"):
        return check_values(decode_clips(item, protocol, index), item.name)
    frames = load_frames(item, protocol, array)
    if frames.ndim != 4 or frames.shape[-1] != 3 or min(frames.shape) == 0:
        raise InputError(f"{item.name}: frames of shape {frames.shape}; expected (T, H, W, 3)")
    starts = clip_starts(len(frames), protocol, index, item.name)
    length = protocol.frames or len(frames) - starts[0]
    clips = np.stack([np.asarray(frames[s:s + length]) for s in starts])
    return check_values(clips, item.name)
