"""Frame transforms and storage encodings shared by pre-processing, prediction and training (numpy and OpenCV)."""
from __future__ import annotations

import cv2
import numpy as np

STORAGE_DTYPES = ("float32", "float16", "uint8")
RESIZE_FILTERS = ("bilinear", "pil-bilinear", "pil-lanczos")  # OpenCV's INTER_LINEAR; Pillow's BILINEAR, LANCZOS
JPEG_QUALITY = 95  # OpenCV's default, which dense-flow tools' cv::imwrite / cv::imencode used


def resize_short_side(frames: np.ndarray, size: int = 256, resize_filter: str = "bilinear") -> np.ndarray:
    """Resize (T, H, W, C) or (H, W, C) frames so the short side is `size`, keeping aspect (see resize_exact).

    The long side is rounded for OpenCV's filter and truncated for Pillow's, as torchvision's Resize and
    video_features' ResizeImproved size it (176x144 -> 313x256 and 312x256)."""
    h, w = frames.shape[-3:-1]
    if min(h, w) == size:
        return frames
    side = int if resize_filter.startswith("pil-") else round
    if h <= w:
        new_h, new_w = size, max(1, side(w * size / h))
    else:
        new_h, new_w = max(1, side(h * size / w)), size
    return resize_exact(frames, new_w, new_h, resize_filter)


def _pil_resize(frame: np.ndarray, width: int, height: int, resize_filter: str) -> np.ndarray:
    """One uint8 RGB (H, W, 3) frame through Pillow's Image.resize with its BILINEAR or LANCZOS filter."""
    from PIL import Image

    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[-1] != 3:
        raise ValueError(f"--resize-filter {resize_filter} resizes uint8 RGB frames, got {frame.dtype} "
                         f"{frame.shape}; use --resize-filter bilinear")
    method = Image.Resampling.LANCZOS if resize_filter == "pil-lanczos" else Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(frame).resize((width, height), method))


def resize_exact(frames: np.ndarray, width: int, height: int, resize_filter: str = "bilinear") -> np.ndarray:
    """Resize (T, H, W, C) or (H, W, C) frames to exactly width x height, not keeping the aspect: OpenCV's bilinear,
    or Pillow's bilinear or Lanczos filter ('pil-bilinear', 'pil-lanczos'; uint8 RGB frames only)."""
    if frames.shape[-3:-1] == (height, width):
        return frames
    if resize_filter not in RESIZE_FILTERS:
        raise ValueError(f"unknown resize filter {resize_filter!r}; choose one of {', '.join(RESIZE_FILTERS)}")
    if resize_filter != "bilinear":
        if frames.ndim == 3:
            return _pil_resize(frames, width, height, resize_filter)
        return np.stack([_pil_resize(frame, width, height, resize_filter) for frame in frames])
    if frames.ndim == 3:
        return cv2.resize(frames, (width, height), interpolation=cv2.INTER_LINEAR)
    out = np.empty((frames.shape[0], height, width, frames.shape[-1]), dtype=frames.dtype)
    for i, frame in enumerate(frames):
        # cv2 drops a trailing channel axis of length 1 or 2; reshape keeps it.
        out[i] = cv2.resize(frame, (width, height), interpolation=cv2.INTER_LINEAR).reshape(out.shape[1:])
    return out


def jpeg_round_trip(frames: np.ndarray, quality: int = JPEG_QUALITY) -> np.ndarray:
    """uint8 RGB (T, H, W, 3) or grayscale (T, H, W) frames as they read back after OpenCV's JPEG at `quality`."""
    if frames.dtype != np.uint8:
        raise TypeError(f"jpeg_round_trip expects uint8 frames, got {frames.dtype}")
    colour = frames.ndim == 4
    out = np.empty_like(frames)
    for i, frame in enumerate(frames):
        image = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR) if colour else frame
        ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
        if not ok:
            raise ValueError(f"OpenCV could not JPEG-encode a {frame.shape} frame")
        decoded = cv2.imdecode(data, cv2.IMREAD_COLOR if colour else cv2.IMREAD_GRAYSCALE)
        out[i] = cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB) if colour else decoded
    return out


def center_crop(frames: np.ndarray, size: int = 224) -> np.ndarray:
    """Centre `size` x `size` crop of (..., H, W, C) frames (a view); raises if a side is smaller."""
    h, w = frames.shape[-3:-1]
    if h < size or w < size:
        raise ValueError(f"cannot crop {size}x{size} from {w}x{h} frames; resize to a short side of at least {size}")
    top, left = (h - size) // 2, (w - size) // 2
    return frames[..., top : top + size, left : left + size, :]


def to_model_range(frames: np.ndarray) -> np.ndarray:
    """uint8 pixels to float32 in [-1, 1] as x / 255 * 2 - 1 (the official I3D input range)."""
    if frames.dtype != np.uint8:
        raise TypeError(f"to_model_range expects uint8 frames, got {frames.dtype}")
    return frames.astype(np.float32) / 255.0 * 2.0 - 1.0


def encode_array(x: np.ndarray, dtype: str) -> np.ndarray:
    """Store float values in [-1, 1] as float32, float16, or uint8 q = round((x + 1) / 2 * 255)."""
    if dtype == "float32":
        return np.asarray(x, dtype=np.float32)
    if dtype == "float16":
        return np.asarray(x, dtype=np.float16)
    if dtype == "uint8":
        q = np.rint((np.clip(x, -1.0, 1.0) + 1.0) * 127.5)
        return q.astype(np.uint8)
    raise ValueError(f"unknown storage dtype {dtype!r}; choose one of {', '.join(STORAGE_DTYPES)}")


def finite_frames(frames: np.ndarray) -> np.ndarray:
    """Per frame (axis 0), whether every value in it is finite: a (T,) bool array."""
    return np.isfinite(frames.reshape(len(frames), -1)).all(axis=1)


def decode_array(arr: np.ndarray) -> np.ndarray:
    """Stored array back to float32 in [-1, 1]; uint8 is read as q / 255 * 2 - 1."""
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0 * 2.0 - 1.0
    if arr.dtype in (np.float32, np.float16, np.float64):
        return np.asarray(arr, dtype=np.float32)
    raise ValueError(f"cannot decode an array of dtype {arr.dtype}; expected float32, float16 or uint8")
