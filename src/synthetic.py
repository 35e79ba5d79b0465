"""A small video dataset whose classes differ only in motion: textures panning left, right, up or down.

Every clip shows a random natural-looking texture (noise smoothed at several scales, in colour),
so appearance carries no label: a model must use motion to tell the classes apart. It is used by
the quickstart and the tests, and users can run it to smoke-test their own set-up.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

# class name -> (dx, dy) of the texture per frame, in pixels
MOTIONS = {"pan_left": (-1, 0), "pan_right": (1, 0), "pan_up": (0, -1), "pan_down": (0, 1)}


def texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A colour texture: white noise smoothed at several scales, as uint8 (H, W, 3)."""
    image = np.zeros((height, width, 3), np.float32)
    for sigma, weight in ((1.0, 0.3), (3.0, 0.5), (8.0, 1.0), (20.0, 1.0)):
        noise = rng.standard_normal((height, width, 3)).astype(np.float32)
        image += weight * cv2.GaussianBlur(noise, (0, 0), sigma) * sigma
    image -= image.min()
    return (image / max(float(image.max()), 1e-6) * 255).astype(np.uint8)


def panning_clip(rng: np.random.Generator, motion: tuple[int, int], frames: int, height: int, width: int,
                 speed: float) -> np.ndarray:
    """uint8 RGB frames (T, H, W, 3) of a random texture moving by `speed` pixels per frame along `motion`."""
    travel = int(np.ceil(speed * frames)) + 1
    big = texture(rng, height + travel, width + travel)
    dx, dy = motion
    x0 = travel if dx > 0 else 0
    y0 = travel if dy > 0 else 0
    # The camera window moves against the texture motion: the texture appears to move by (dx, dy).
    return np.stack([big[int(round(y0 - dy * speed * t)):int(round(y0 - dy * speed * t)) + height,
                         int(round(x0 - dx * speed * t)):int(round(x0 - dx * speed * t)) + width]
                     for t in range(frames)])


def write_video(path: Path, frames: np.ndarray, fps: float) -> None:
    """Write RGB frames as an .mp4 (mp4v) through a temporary name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".part" + path.suffix)
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps, (frames.shape[2], frames.shape[1]))
    if not writer.isOpened():
        raise RuntimeError(f"{tmp}: OpenCV cannot write mp4 videos here")
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    tmp.replace(path)


def make_videos(root: Path, per_class: int = 8, frames: int = 50, height: int = 128, width: int = 160,
                fps: float = 25.0, speed: float = 2.0, seed: int = 0, classes: tuple[str, ...] = tuple(MOTIONS)
                ) -> list[Path]:
    """Write root/<class>/clip_<i>.mp4 for each motion class; existing files are kept."""
    rng = np.random.default_rng(seed)
    paths = []
    for name in classes:
        for i in range(per_class):
            path = Path(root) / name / f"clip_{i:03d}.mp4"
            clip = panning_clip(rng, MOTIONS[name], frames, height, width, speed)
            if not path.exists():
                write_video(path, clip, fps)
            paths.append(path)
    return paths


def make_arrays(root: Path, per_class: tuple[int, int] = (4, 2), frames: int = 20, size: int = 128,
                speed: float = 2.0, seed: int = 0, classes: tuple[str, ...] = tuple(MOTIONS)) -> Path:
    """A pre-processed dataset (classes.txt, train/ and val/ rgb-SampleRate_1.npy as uint8) without video coding."""
    from src.jobs.files import save_array_atomic
    from src.media.transforms import encode_array, to_model_range

    rng = np.random.default_rng(seed)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("\n".join(classes) + "\n")
    for split, count in zip(("train", "val"), per_class):
        for name in classes:
            for i in range(count):
                clip = to_model_range(panning_clip(rng, MOTIONS[name], frames, size, size, speed))
                save_array_atomic(root / split / name / f"{name}_{i}" / "rgb-SampleRate_1.npy",
                                  encode_array(clip, "uint8"))
    return root


# ---------------------------------------------------------------- multi-label: two things happen at once

# Multi-label classes: a horizontal pan, a zoom into the picture and a brightening; a clip shows a
# pan (or none) together with a zoom, a brightening or neither, at least one of them.
MULTI_LABELS = ("pan_left", "pan_right", "zoom_in", "brighten")
MULTI_COMBOS = tuple(combo for pan in ((), ("pan_left",), ("pan_right",))
                     for other in ((), ("zoom_in",), ("brighten",)) if (combo := pan + other))


def motion_clip(rng: np.random.Generator, labels: tuple[str, ...], frames: int, height: int, width: int,
                speed: float = 2.0, zoom: float = 0.03, dim: float = 0.4) -> np.ndarray:
    """uint8 RGB frames (T, H, W, 3) of a random texture showing every motion in `labels` at once.

    pan_left / pan_right: the texture moves `speed` px per frame; zoom_in: the view's scale grows by
    `zoom` per frame (a window shrinking about its centre, resized back); brighten: the brightness
    rises linearly from `dim` to 1 over the clip.
    """
    unknown = [lab for lab in labels if lab not in MULTI_LABELS]
    if unknown:
        raise ValueError(f"unknown motions {unknown}; choose from {', '.join(MULTI_LABELS)}")
    dx = (1 if "pan_right" in labels else -1 if "pan_left" in labels else 0) * speed
    travel = int(np.ceil(abs(dx) * frames)) + 2
    big = texture(rng, height + 2, width + 2 * travel)
    out = np.empty((frames, height, width, 3), np.uint8)
    for t in range(frames):
        scale = (1 + zoom) ** t if "zoom_in" in labels else 1.0
        cx = big.shape[1] / 2 - dx * (t - frames / 2)  # the window moves against the texture
        cy = big.shape[0] / 2
        h, w = height / scale, width / scale
        m = np.float32([[w / width, 0, cx - w / 2], [0, h / height, cy - h / 2]])
        frame = cv2.warpAffine(big, m, (width, height), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                               borderMode=cv2.BORDER_REFLECT)
        if "brighten" in labels:
            frame = np.clip(frame * (dim + (1 - dim) * t / max(frames - 1, 1)), 0, 255).astype(np.uint8)
        out[t] = frame
    return out


def make_multilabel_arrays(root: Path, per_combo: tuple[int, int] = (3, 1), frames: int = 20, size: int = 128,
                           seed: int = 0) -> Path:
    """A pre-processed multi-label dataset (uint8 rgb arrays, labels.txt per multi-label item), no video coding."""
    from src.jobs.files import save_array_atomic
    from src.media.transforms import encode_array, to_model_range

    rng = np.random.default_rng(seed)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("\n".join(MULTI_LABELS) + "\n")
    for split, count in zip(("train", "val"), per_combo):
        for combo in MULTI_COMBOS:
            for i in range(count):
                folder = root / split / combo[0] / f"{'+'.join(combo)}_{i}"
                clip = to_model_range(motion_clip(rng, combo, frames, size, size))
                save_array_atomic(folder / "rgb-SampleRate_1.npy", encode_array(clip, "uint8"))
                if len(combo) > 1:
                    (folder / "labels.txt").write_text("\n".join(combo) + "\n")
    return root


def make_recordings(root: Path, recordings: int = 4, segment_frames: int = 50, height: int = 128, width: int = 160,
                    fps: float = 25.0, seed: int = 0) -> Path:
    """Long videos root/recording_<i>.mp4, each a run of segments showing one combination of motions, and
    root/annotations.csv (video,label,start,end) describing them; every combination appears in every recording.

    Returns the annotation file. Existing videos are kept.
    """
    rng = np.random.default_rng(seed)
    root = Path(root)
    rows = ["video,label,start,end"]
    for r in range(recordings):
        order = [MULTI_COMBOS[i] for i in rng.permutation(len(MULTI_COMBOS))]
        clips = [motion_clip(rng, combo, segment_frames, height, width) for combo in order]
        path = root / f"recording_{r:02d}.mp4"
        if not path.exists():
            write_video(path, np.concatenate(clips), fps)
        for k, combo in enumerate(order):
            start, end = k * segment_frames / fps, (k + 1) * segment_frames / fps
            rows.append(f"{path.name},{';'.join(combo)},{start:g},{end:g}")
    annotations = root / "annotations.csv"
    annotations.write_text("\n".join(rows) + "\n")
    return annotations
