"""The work on one job: decode its source once, resample, resize, and write the rgb and flow arrays of the
whole item or of each segment cut from it; every failure becomes the item's manifest row, never an exception."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm import tqdm

from src.annotations import frame_range
from src.flow import FlowExtractor, rgb_to_gray
from src.jobs import disk_full_message, is_disk_full, save_array_atomic
from src.media import FrameStream, VideoError, center_crop, encode_array, resize_short_side, to_model_range
from src.paths import ITEM_LABELS_FILE
from src.preprocess.discovery import RawItem
from src.preprocess.manifest import base_row, shapes_on_disk, write_text
from src.preprocess.options import Options
from src.preprocess.plan import FlowPlan, Job

ENCODE_CHUNK = 64  # frames converted to the storage dtype at a time (bounds float32 temporaries)


def write_labels(folder: Path, labels: tuple[str, ...]) -> None:
    """An item's label set as <item>/labels.txt (one per line), for items with several labels."""
    folder.mkdir(parents=True, exist_ok=True)
    write_text(folder / ITEM_LABELS_FILE, "".join(f"{lab}\n" for lab in labels))


def encode_frames(frames: np.ndarray, opts: Options) -> np.ndarray:
    """uint8 resized RGB frames -> cropped, model-range, storage-dtype array, a chunk at a time."""
    view = center_crop(frames, opts.crop) if opts.crop else frames
    out = np.empty(view.shape, dtype=np.dtype(opts.dtype))
    for start in range(0, len(view), ENCODE_CHUNK):
        out[start:start + ENCODE_CHUNK] = encode_array(to_model_range(view[start:start + ENCODE_CHUNK]), opts.dtype)
    return out


def flow_frames(frames: np.ndarray, opts: Options, extractor: FlowExtractor, bar: tqdm | None) -> np.ndarray:
    """Flow of the grayscale resized frames, pair by pair, cropped and stored in the storage dtype."""
    gray = rgb_to_gray(frames)
    h, w = gray.shape[1:]
    ch, cw = (opts.crop, opts.crop) if opts.crop else (h, w)
    out = np.empty((len(gray) - 1, ch, cw, 2), dtype=np.dtype(opts.dtype))
    for i in range(len(gray) - 1):
        flow = extractor.pair(gray[i], gray[i + 1])
        if opts.crop:
            flow = center_crop(flow, opts.crop)
        out[i] = encode_array(flow, opts.dtype)
        if bar is not None:
            bar.update(1)
    return out


def failure_message(item: RawItem, exc: Exception, writing: Path | None) -> str:
    """The manifest message of a failed item: the video's own error, a full disk while writing, or anything else."""
    if isinstance(exc, VideoError):
        return str(exc)
    if isinstance(exc, OSError) and writing is not None and is_disk_full(exc):
        return disk_full_message(writing, exc)
    return f"{item.source}: unexpected {type(exc).__name__}: {exc}"


def process_item(item: RawItem, paths: dict[str, Path], opts: Options, flow: FlowPlan, show_frames: bool = False,
                 ) -> tuple[dict[str, str], np.ndarray | None]:
    """Decode, resample, resize and write the missing arrays of one whole item; return its manifest row.

    With batched flow (`flow.batched`) the flow is left to the caller: the grayscale frames whose flow
    is still to compute come back with the row (None when the item failed or needs no flow: the row is final).
    """
    row = base_row(item, opts)
    todo = {m: p for m, p in paths.items() if opts.overwrite or not p.exists()}
    bar = None
    writing: Path | None = None
    try:
        if len(item.labels) > 1:
            write_labels(next(iter(paths.values())).parent, item.labels)
        stream = FrameStream(item.source, opts.fps, opts.folder_fps)
        if show_frames:
            total = stream.estimated_frames() // opts.sample_rate * (1 + ("flow" in todo))
            bar = tqdm(total=total, desc=item.name[:20], unit="frame", leave=False, position=1)
        kept = []
        for i, frame in enumerate(stream):
            if i % opts.sample_rate == 0:
                kept.append(resize_short_side(frame, opts.size))
                if bar is not None:
                    bar.update(1)
        info = stream.info
        row.update(source_fps=f"{info.fps:.3f}", duration_s=f"{info.duration:.3f}", source_frames=str(info.frame_count))
        if len(kept) < opts.min_frames:
            rate = f"{opts.fps:g}" if opts.fps else "native"
            raise VideoError(f"{item.source}: too short, {len(kept)} frame(s) after resampling to {rate} fps "
                             f"and sample rate {opts.sample_rate}; at least {opts.min_frames} needed")
        frames = np.stack(kept)
        del kept
        if "rgb" in todo:
            writing = todo["rgb"]
            save_array_atomic(writing, encode_frames(frames, opts))
        row.update(message=" | ".join(info.warnings), frames_written=str(len(frames)))
        if "flow" in todo and flow.batched:
            return row, rgb_to_gray(frames)
        if "flow" in todo:
            flow_array = flow_frames(frames, opts, flow.extractor(), bar)
            writing = todo["flow"]
            save_array_atomic(writing, flow_array)
        row.update(status="done")
        row.update(shapes_on_disk(paths))
    except Exception as exc:  # a bad video, a full disk or a bug on one item must not stop the batch
        row.update(status="failed", message=failure_message(item, exc, writing))
    finally:
        if bar is not None:
            bar.close()
    return row, None


def output_rate(stream: FrameStream, opts: Options) -> float:
    """Frames per second of what the stream yields under `opts` (segment times map to frames by it)."""
    if stream.kind == "video":
        rate = opts.fps or stream.info.fps
    else:
        rate = opts.fps if opts.folder_fps and opts.fps else (opts.folder_fps or stream.info.fps or opts.fps or 0.0)
    if not rate:
        raise VideoError(f"{stream.path}: its frame rate is unknown, so segment times cannot be mapped to frames; "
                         "pass --fps (or --folder-fps for frame folders)")
    return float(rate)


def write_segment(frames: list[np.ndarray], item: RawItem, paths: dict[str, Path], opts: Options, flow: FlowPlan,
                  row: dict[str, str], warnings: list[str]) -> None:
    """Write one cut item's arrays (and labels.txt) and complete its manifest row, or mark it failed."""
    writing: Path | None = None
    try:
        if len(frames) < opts.min_frames:
            span = f" [{item.start:g}, {item.end:g}) s" if item.start is not None else ""
            raise VideoError(f"{item.source}{span}: {len(frames)} frame(s) at sample rate "
                             f"{opts.sample_rate}; at least {opts.min_frames} needed")
        todo = {m: p for m, p in paths.items() if opts.overwrite or not p.exists()}
        if len(item.labels) > 1:
            write_labels(next(iter(paths.values())).parent, item.labels)
        stacked = np.stack(frames)
        if "rgb" in todo:
            writing = todo["rgb"]
            save_array_atomic(writing, encode_frames(stacked, opts))
        if "flow" in todo:
            flow_array = flow_frames(stacked, opts, flow.extractor(), None)
            writing = todo["flow"]
            save_array_atomic(writing, flow_array)
        row.update(status="done", message=" | ".join(warnings), frames_written=str(len(stacked)))
        row.update(shapes_on_disk(paths))
    except Exception as exc:  # one bad segment must not stop the others
        row.update(status="failed", message=failure_message(item, exc, writing))


def process_segments(job: Job, opts: Options, flow: FlowPlan) -> list[dict[str, str]]:
    """Decode one source once and write every item cut from it (segments [start, end) s, or the whole source).

    Output frame k (time k / fps after resampling) belongs to a segment when start <= k / fps < end,
    so a segment of d seconds has round(d * fps) frames, the same frames the whole video's arrays
    hold at those indices. Only frames inside some segment are resized and kept, and each segment
    is written as soon as its last frame is decoded, so memory holds the open segments only.
    """
    items, paths = job.items, job.paths
    rows = [base_row(item, opts) for item in items]
    buffers: dict[int, list[np.ndarray]] = {j: [] for j in range(len(items))}
    warnings: list[str] = []
    try:
        stream = FrameStream(job.source, opts.fps, opts.folder_fps)
        for row in rows:
            row["source_fps"] = f"{stream.info.fps:.3f}"
        rate = output_rate(stream, opts)
        ranges = [frame_range(it.start, it.end, rate) if it.start is not None else (0, None) for it in items]
        last = None if any(b is None for _, b in ranges) else max(b for _, b in ranges)
        frames = iter(stream)
        decoded = 0
        for i, frame in enumerate(frames):
            if last is not None and i >= last:
                break
            decoded = i + 1
            wanted = [j for j in buffers if ranges[j][0] <= i and (i - ranges[j][0]) % opts.sample_rate == 0]
            if wanted:
                small = resize_short_side(frame, opts.size)
                for j in wanted:
                    buffers[j].append(small)
            for j in [j for j in buffers if ranges[j][1] is not None and ranges[j][1] <= i + 1]:
                write_segment(buffers.pop(j), items[j], paths[j], opts, flow, rows[j], warnings)
        if hasattr(frames, "close"):
            frames.close()
        warnings = list(stream.info.warnings)
        length = decoded / rate
        for j in list(buffers):
            item, (first, stop) = items[j], ranges[j]
            if stop is None:
                write_segment(buffers.pop(j), item, paths[j], opts, flow, rows[j], warnings)
            elif first >= decoded:
                buffers.pop(j)
                rows[j].update(status="failed", message=f"{item.where}: segment [{item.start:g}, {item.end:g}) s is "
                                                        f"outside {item.source} ({length:.2f} s long)")
            else:
                note = (f"{item.where}: segment [{item.start:g}, {item.end:g}) s ends after {item.source} "
                        f"({length:.2f} s long); cut to [{item.start:g}, {length:.2f}) s")
                write_segment(buffers.pop(j), item, paths[j], opts, flow, rows[j], [*warnings, note])
    except VideoError as exc:
        for j in buffers:
            rows[j].update(status="failed", message=str(exc))
    except Exception as exc:  # a bug or an OS problem on one video must not stop the batch
        for j in buffers:
            rows[j].update(status="failed", message=f"{job.source}: unexpected {type(exc).__name__}: {exc}")
    for row in rows:
        row.setdefault("status", "failed")
    return rows


def run_job(job: Job, opts: Options, flow: FlowPlan, show_frames: bool = False) -> list[dict[str, str]]:
    """The rows of one job: a whole item (decoded and written in full), or the segments cut from one source."""
    if job.segmented:
        return process_segments(job, opts, flow)
    return [process_item(job.items[0], job.paths[0], opts, flow, show_frames)[0]]
