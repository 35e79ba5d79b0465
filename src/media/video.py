"""Decoding videos, frame folders and GIFs into upright uint8 RGB frames resampled by timestamp."""
from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# FFmpeg's own log lines ("Invalid NAL unit size ...") would tear through progress bars; broken
# input is reported by us instead (VideoError or a warning). Read when a capture opens.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "8")

import cv2  # noqa: E402

VIDEO_EXTENSIONS = frozenset(
    ".mp4 .m4v .avi .mkv .mov .webm .mpg .mpeg .wmv .flv .3gp .ogv .ts .mts .m2ts .gif".split()
)
IMAGE_EXTENSIONS = frozenset(".png .jpg .jpeg .bmp .tif .tiff .webp".split())

# Decoding ending this many source frames short of the container's count is reported as frames lost
# (headers of some containers are estimates off by a frame or two).
_LOST_FRAMES_TOLERANCE = 2


@dataclass
class VideoInfo:
    """What was decoded: source rate, decoded frame count, duration in seconds, upright size."""

    path: Path
    fps: float
    frame_count: int
    duration: float
    width: int
    height: int
    rotation: int
    warnings: list[str] = field(default_factory=list)


class VideoError(ValueError):
    """An input cannot be decoded; the message names the file and the reason."""


def natural_key(name: str) -> list:
    """Sort key putting 'pic2' before 'pic10' (digit runs compare as numbers, case-insensitive)."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part.lower()) for part in re.split(r"(\d+)", name)]


def is_hidden(path: Path) -> bool:
    """True for dot-files and dot-folders."""
    return Path(path).name.startswith(".")


def is_video_file(path: Path) -> bool:
    """True for a visible file whose extension is a video container FFmpeg decodes (or a GIF)."""
    path = Path(path)
    return path.is_file() and not is_hidden(path) and path.suffix.lower() in VIDEO_EXTENSIONS


def is_image_file(path: Path) -> bool:
    """True for a visible png/jpg/jpeg/bmp/tif/webp file."""
    path = Path(path)
    return path.is_file() and not is_hidden(path) and path.suffix.lower() in IMAGE_EXTENSIONS


def frame_files(folder: Path) -> list[Path]:
    """The image files of a frame folder in natural order (hidden and non-image files left out)."""
    return sorted((p for p in Path(folder).iterdir() if is_image_file(p)), key=lambda p: natural_key(p.name))


def is_frame_folder(path: Path) -> bool:
    """True for a visible folder holding at least one image file."""
    path = Path(path)
    return path.is_dir() and not is_hidden(path) and any(is_image_file(p) for p in path.iterdir())


def resample(frames: Iterable[tuple[np.ndarray, float]], fps: float, step: float) -> Iterator[np.ndarray]:
    """Resample (frame, time in s from the first frame) pairs to `fps`, as FFmpeg's fps filter (round=near).

    Output frame k (time k/fps) is the last source frame whose time rounds to at most k output periods,
    i.e. time < (k + 0.5) / fps; the clip lasts until the last source time plus `step` (one source
    frame), giving round(duration * fps) output frames, at least one. Holds one source frame at a time.
    """
    k = 0
    previous = None
    last_t = 0.0
    for frame, t in frames:
        while previous is not None and t >= (k + 0.5) / fps - 1e-9:
            yield previous
            k += 1
        previous, last_t = frame, t
    if previous is None:
        return
    count = max(1, math.floor((last_t + step) * fps + 0.5))
    while k < count:
        yield previous
        k += 1


def _rotate(frame: np.ndarray, rotation: int) -> np.ndarray:
    """Rotate a frame clockwise by the container's display rotation (0/90/180/270)."""
    code = {90: cv2.ROTATE_90_CLOCKWISE, 180: cv2.ROTATE_180, 270: cv2.ROTATE_90_COUNTERCLOCKWISE}.get(rotation)
    return frame if code is None else cv2.rotate(frame, code)


class FrameStream:
    """Decoded frames of one video, frame folder or GIF, streamed one at a time.

    `info` holds the header facts on creation; frame_count, duration and warnings are final once
    iteration ends. Iterating yields uint8 RGB upright frames at the requested rate.
    """

    def __init__(self, path: Path, fps: float | None = 25.0, folder_fps: float | None = None) -> None:
        self.path = Path(path)
        self.fps = fps
        self.folder_fps = folder_fps
        if not self.path.exists():
            raise VideoError(f"{self.path}: no such file or folder")
        if self.path.is_dir():
            self.kind = "folder"
            self.files = frame_files(self.path)
            if not self.files:
                raise VideoError(f"{self.path}: the folder holds no png/jpg/jpeg/bmp frames")
            src_fps = float(folder_fps or fps or 0.0)
            n = len(self.files)
            self.info = VideoInfo(self.path, src_fps, n, n / src_fps if src_fps else 0.0, 0, 0, 0, [])
        elif self.path.suffix.lower() == ".gif":
            self.kind = "gif"
            self.info = _read_gif(self.path, header_only=True)[1]
        else:
            self.kind = "video"
            self.info = _probe_video(self.path)

    def estimated_frames(self) -> int:
        """Output frame count expected from the header (exact for frame folders)."""
        info = self.info
        if self.kind == "video" and self.fps and info.duration > 0:
            return max(1, math.floor(info.duration * self.fps + 0.5))
        if self.kind == "folder" and self.folder_fps and self.fps:
            return max(1, math.floor(info.frame_count / self.folder_fps * self.fps + 0.5))
        return info.frame_count

    def __iter__(self) -> Iterator[np.ndarray]:
        if self.kind == "folder":
            frames: Iterator = iter_folder_frames(self.path, self.files, self.info)
            if self.folder_fps and self.fps:
                timed = ((f, i / self.folder_fps) for i, f in enumerate(frames))
                frames = resample(timed, self.fps, 1.0 / self.folder_fps)
            return frames
        if self.kind == "gif":
            return iter(_read_gif(self.path)[0])
        timed = _iter_video(self.path, self.info)
        if not self.fps:
            return (f for f, _ in timed)
        step = 1.0 / self.info.fps if self.info.fps > 0 else 1.0 / self.fps
        return resample(timed, self.fps, step)

    def frames(self, wanted: Callable[[int], bool] | None) -> Iterator[np.ndarray | None]:
        """The frames iterating yields, None in place of frame i where wanted(i) is false (asked once per frame, in
        order); at a video file's native rate such a frame is decoded but never converted to RGB."""
        if self.kind != "video" or self.fps:
            return (f if wanted is None or wanted(i) else None for i, f in enumerate(iter(self)))
        return (f for f, _ in _iter_video(self.path, self.info, wanted))


def _probe_video(path: Path) -> VideoInfo:
    """Header facts of a video file (size upright, rotation, rate, declared frame count)."""
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    try:
        if not cap.isOpened():
            raise VideoError(f"{path}: cannot be opened as a video (unreadable, not a video, or an unsupported codec)")
        rotation = int(round(cap.get(cv2.CAP_PROP_ORIENTATION_META) or 0)) % 360
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        if not math.isfinite(fps) or fps > 1000:
            fps = 0.0
        count = max(0, int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0))
        w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        # With ORIENTATION_AUTO on, OpenCV already reports the upright size.
        if rotation in (90, 270) and not cap.get(cv2.CAP_PROP_ORIENTATION_AUTO):
            w, h = h, w
    finally:
        cap.release()
    return VideoInfo(Path(path), fps, count, count / fps if fps else 0.0, w, h, rotation, [])


def _iter_video(path: Path, info: VideoInfo, wanted: Callable[[int], bool] | None = None
                ) -> Iterator[tuple[np.ndarray | None, float]]:
    """Yield (RGB upright frame, presentation time in s from the first frame); finalise `info` at the end.

    A frame i with wanted(i) false is yielded as None: decoded (grab) but not converted (retrieve, RGB), so its
    size is not checked."""
    # FFmpeg decodes with a thread per core unless told otherwise: a process limited to fewer OpenCV threads (a
    # decoding worker beside the network, src.jobs.set_threads) decodes with that many (the frames are the same).
    threads = cv2.getNumThreads()
    params = [cv2.CAP_PROP_N_THREADS, threads] if 0 < threads < (os.cpu_count() or 1) else []
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG, params)
    if not cap.isOpened():
        raise VideoError(f"{path}: cannot be opened as a video (unreadable, not a video, or an unsupported codec)")
    declared = info.frame_count
    # OpenCV's FFmpeg backend applies the rotation metadata itself when ORIENTATION_AUTO is on (the
    # default); a build or backend that cannot leaves frames as stored, and we rotate them here.
    manual_rotation = 0
    if info.rotation and not (cap.set(cv2.CAP_PROP_ORIENTATION_AUTO, 1) and cap.get(cv2.CAP_PROP_ORIENTATION_AUTO)):
        manual_rotation = info.rotation
    src_fps = info.fps
    n = 0
    t0 = None
    last_t = 0.0
    shape = None
    retimed = False
    try:
        while cap.grab():  # read() is grab() then retrieve()
            frame = None
            if wanted is None or wanted(n):
                ok, frame = cap.retrieve()
                if not ok or frame is None:
                    break
            t = cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
            if frame is not None:
                if manual_rotation:
                    frame = _rotate(frame, manual_rotation)
                if shape is None:
                    shape = frame.shape
                    info.height, info.width = shape[:2]
                elif frame.shape != shape:
                    raise VideoError(
                        f"{path}: frame size changes mid-stream at frame {n} ({frame.shape[1]}x{frame.shape[0]} "
                        f"after {shape[1]}x{shape[0]}); re-encode it to one size"
                    )
            if t0 is None:
                t0 = t
            t -= t0
            if n and t <= last_t:
                # Missing or repeated timestamps: time the frame one source period after the last one.
                retimed = True
                t = last_t + (1.0 / src_fps if src_fps > 0 else 0.04)
            last_t = t
            n += 1
            yield (None if frame is None else cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)), t
    finally:
        cap.release()
    if n == 0:
        raise VideoError(f"{path}: no frames could be decoded (empty or corrupted file)")
    if src_fps <= 0:
        src_fps = (n - 1) / last_t if last_t > 0 else 25.0
        info.fps = src_fps
    info.frame_count = n
    info.duration = last_t + 1.0 / src_fps
    if retimed:
        info.warnings.append(f"{path}: some frames had missing or repeated timestamps and were timed by the frame rate")
    if declared - n > _LOST_FRAMES_TOLERANCE:
        info.warnings.append(
            f"{path}: decoding stopped after {n} of the {declared} frames the header declares "
            f"(source frames {n}-{declared - 1} lost; {info.duration:.2f} s of {declared / src_fps:.2f} s kept); "
            "the file is truncated or corrupted"
        )


def _read_gif(path: Path, header_only: bool = False) -> tuple[list[np.ndarray], VideoInfo]:
    """All frames of an animated GIF as RGB (taken as already sampled)."""
    from PIL import Image, ImageSequence

    try:
        with Image.open(path) as im:
            n = getattr(im, "n_frames", 1)
            duration_ms = im.info.get("duration") or 0
            w, h = im.size
            frames = [] if header_only else [np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(im)]
    except Exception as exc:  # PIL raises many exception types for broken files
        raise VideoError(f"{path}: cannot be read as a GIF ({exc})") from exc
    fps = 1000.0 / duration_ms if duration_ms else 0.0
    return frames, VideoInfo(Path(path), fps, n, n / fps if fps else 0.0, w, h, 0, [])


def _read_image(path: Path) -> np.ndarray:
    """One image file as RGB uint8 (EXIF orientation applied, grey/alpha converted)."""
    data = np.fromfile(path, dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise VideoError(f"{path}: cannot be decoded as an image (empty or corrupted file)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def iter_folder_frames(folder: Path, files: list[Path] | None = None, info: VideoInfo | None = None) -> Iterator[np.ndarray]:
    """Yield the RGB frames of a frame folder in natural order, checking they share one size."""
    files = frame_files(folder) if files is None else files
    if not files:
        raise VideoError(f"{folder}: the folder holds no png/jpg/jpeg/bmp frames")
    first_shape = None
    for f in files:
        image = _read_image(f)
        if first_shape is None:
            first_shape = image.shape
            if info is not None:
                info.height, info.width = first_shape[:2]
        elif image.shape != first_shape:
            raise VideoError(
                f"{f}: frame is {image.shape[1]}x{image.shape[0]} but the folder's first frame is "
                f"{first_shape[1]}x{first_shape[0]}; all frames of a sequence must have one size"
            )
        yield image


def probe(path: Path) -> VideoInfo:
    """Header facts without decoding every frame (counts and durations are the container's claims)."""
    path = Path(path)
    if path.is_dir():
        stream = FrameStream(path)
        first = _read_image(stream.files[0])
        stream.info.height, stream.info.width = first.shape[:2]
        return stream.info
    return FrameStream(path).info


def read_frames(
    path: Path, fps: float | None = 25.0, folder_fps: float | None = None
) -> tuple[np.ndarray, VideoInfo]:
    """Upright uint8 RGB frames (T, H, W, 3) of a video, frame folder or GIF, resampled to `fps`.

    Videos are resampled by presentation timestamps (fps=None keeps the native rate). Frame folders
    and GIFs are taken as already sampled unless `folder_fps` declares a folder's rate, in which case
    it is resampled from that rate to `fps`.
    """
    stream = FrameStream(path, fps, folder_fps)
    return np.stack(list(stream)), stream.info
