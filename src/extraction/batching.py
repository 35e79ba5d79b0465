"""The model side of a features job: windows of every video in flight gathered into batches for the streams'
models, and each finished video's feature arrays.

A video is fed decoding messages (frame chunks, then its end); each stream's Windower hands out windows as
their frames arrive, each window is cut into its crops, and crops of the same stream and shape from any
video share a batch. Flow: T frames give T - 1 flows; the last flow is repeated once so the flow stream
also has T frames and shares the RGB windows (window s uses flows s .. s + W - 1, i.e. frames s .. s + W);
with align drop-first or drop-last the decoder sent T - 1 frames and T - 1 flows, and nothing is repeated;
per-frame rows padded 'still' get zero flow past the ends (the flow of a video standing still) and the end frames
repeated.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from src.device import pick_device
from src.extraction.config import ExtractionError, FeatureConfig
from src.extraction.inputs import Video
from src.extraction.windows import Windower, crop_boxes, window_count, window_starts
from src.inference import accelerate
from src.media.video import VideoError
from src.model import BLOCKS, LogitsPool
from src.training import run_streams
from src.weights import STREAM_CHANNELS, Recipe, Streams, flow_recipe, pretrained_streams

WEIGHT_OPTIONS = {"rgb": "--weights", "flow": "--flow-weights"}
HEAD_POOL = LogitsPool(*next(args for _, kind, args in BLOCKS if kind == "avgpool"))  # DeepMind's (2, 7, 7), VALID


def pool_features(y: torch.Tensor, how: str) -> torch.Tensor:
    """(N, C, t, h, w) endpoint maps -> (N, C): 'mean' over (t, h, w); 'head': the classifier head's pooling
    (the (2, 7, 7) average pool, stride 1, no padding, then the mean over what is left); 'none': unchanged.

    For 16-frame windows Mixed_5c is (2, 7, 7), the pool leaves one value and both agree; for 21 frames it has
    3 time steps, the pool leaves 2, (x0 + x1) / 2 and (x1 + x2) / 2, so the head gives (x0 + 2 x1 + x2) / 4.
    """
    if how == "mean":
        return y.mean(dim=(2, 3, 4))
    if how == "head":
        return HEAD_POOL(y).mean(dim=(2, 3, 4))
    return y


def load_models(cfg: FeatureConfig, device: torch.device) -> tuple[dict[str, torch.nn.Module], dict[str, Recipe], str]:
    """Each requested stream's model (fast path or plain), its input recipe, and a line saying which path runs."""
    if cfg.checkpoint:
        streams = run_streams(cfg.checkpoint)
        missing = [s for s in cfg.streams if s not in streams.models]
        if missing:
            raise ExtractionError(f"{cfg.checkpoint}: the run has no {missing[0]} stream "
                                  f"(it has {', '.join(streams.models)}); pass --streams {','.join(streams.models)}")
        models, recipes = streams.models, streams.recipes
    else:
        models, recipes = {}, {}
        for stream in cfg.streams:
            one = _pretrained(stream, cfg.weights if stream == "rgb" else cfg.flow_weights)
            models.update(one.models)
            recipes.update(one.recipes)
    models = {s: models[s] for s in cfg.streams}
    recipes = {s: recipes[s] for s in cfg.streams}
    if "flow" in recipes and cfg.flow_algorithm:
        recipes["flow"] = (replace(recipes["flow"], flow_algorithm=cfg.flow_algorithm) if cfg.checkpoint
                           else flow_recipe(cfg.flow_algorithm))
    fast, path = accelerate(models, device, cfg.precision, cfg.compile)
    return fast, recipes, path


def _pretrained(stream: str, weights: str) -> Streams:
    """Pretrained weights for one stream; ExtractionError naming the option when they are of the other modality."""
    streams = pretrained_streams(weights)  # its one stream is the checkpoint's modality
    if stream not in streams.models:
        kind, model = next(iter(streams.models.items()))
        raise ExtractionError(f"{WEIGHT_OPTIONS[stream]} {weights}: a {'RGB' if kind == 'rgb' else 'flow'} checkpoint "
                              f"({model.in_channels} input channels); the {stream} stream needs {STREAM_CHANNELS[stream]}")
    return streams


@dataclass
class Pending:
    """One clip waiting for the model: which video, stream, row and crop, and its window of frames."""

    video: int
    stream: str
    row: int
    crop: int
    window: np.ndarray
    box: tuple[int, int, bool]


def to_model_input(windows: list[np.ndarray], boxes: list[tuple[int, int, bool]], size: int, stream: str,
                   device: torch.device, negate_flipped_flow: bool = True) -> torch.Tensor:
    """Crop (and flip) each (t, H, W, C) window and stack them as a float32 (N, C, t, size, size) batch in [-1, 1];
    a flipped flow crop's x flow is negated (mirrored motion) unless `negate_flipped_flow` is False (CMCS's rule)."""
    clips = []
    for window, (top, left, flip) in zip(windows, boxes):
        x = torch.from_numpy(np.ascontiguousarray(window[:, top:top + size, left:left + size]))
        clips.append(x.flip(2) if flip else x)
    if len({c.dtype for c in clips}) > 1:  # zero-padded windows are float already
        clips = [_model_range(c) for c in clips]
    x = _model_range(torch.stack(clips).to(device))
    if stream == "flow" and negate_flipped_flow:
        for i, (_, _, flip) in enumerate(boxes):
            if flip:  # mirrored motion: horizontal flow changes sign
                x[i, ..., 0].neg_()
    return x.permute(0, 4, 1, 2, 3)


def _model_range(x: torch.Tensor) -> torch.Tensor:
    """uint8 pixels (or pre-processed uint8 arrays) as x / 255 * 2 - 1; float arrays are model range already."""
    return x.float() / 255.0 * 2.0 - 1.0 if x.dtype == torch.uint8 else x.float()


@dataclass
class VideoState:
    """What is known about one video while it is in flight."""

    video: Video
    windowers: dict[str, Windower]
    results: dict[str, dict[int, np.ndarray]]
    outstanding: int = 0
    ended: bool = False
    info: dict = field(default_factory=dict)
    failed: str | None = None
    started: float = field(default_factory=time.monotonic)


class Extractor:
    """Runs the streams' models over batches of windows gathered across videos, and gives each finished video's arrays."""

    def __init__(self, cfg: FeatureConfig) -> None:
        self.cfg = cfg
        self.device = pick_device(cfg.device)
        self.models, self.recipes, self.path = load_models(cfg, self.device)
        self.queue: dict[tuple, list[Pending]] = {}
        self.states: dict[int, VideoState] = {}
        self.model_seconds = 0.0
        self.windows_run = 0

    def open(self, index: int, video: Video) -> None:
        """Start collecting a video's windows."""
        cfg = self.cfg
        self.states[index] = VideoState(
            video, {s: Windower(cfg.window, cfg.stride, cfg.per_frame, self._pad(s), cfg.tail) for s in cfg.streams},
            {s: {} for s in cfg.streams})

    def _pad(self, stream: str) -> str:
        """The Windower padding of one stream: 'still' is the end frames repeated and no motion past the ends."""
        if self.cfg.pad == "still":
            return "zero" if stream == "flow" else "edge"
        return self.cfg.pad

    def feed(self, index: int, kind: str, payload) -> list[int]:
        """Take one decoding message; return the indices of videos that are now finished."""
        state = self.states.get(index)
        if state is None or state.failed:
            return []
        if kind == "failed":
            state.failed = str(payload)
            state.ended = True
            return self._drop(index)
        if kind == "end":
            state.info = payload
            problem = self._too_short(state.video, payload["frames"])
            if problem:
                state.failed, state.ended = problem, True
                return self._drop(index)
            ready = {s: w.finish() if s == "rgb" else self._finish_flow(w) for s, w in state.windowers.items()}
            state.ended = True
            for stream, windows in ready.items():
                self._enqueue(index, stream, windows)
        elif kind in state.windowers:
            self._enqueue(index, kind, state.windowers[kind].push(payload))
        return self.run_full()

    def _too_short(self, video: Video, frames: int) -> str | None:
        """Why --short-videos refuses a video (reject: at most --window frames, as CMCS's extractor; drop: fewer than
        --window, no full window, as video_features writes nothing for it), or None."""
        cfg = self.cfg
        if cfg.short_videos == "one-window" or cfg.per_frame or frames > cfg.window or \
                (cfg.short_videos == "drop" and frames == cfg.window):
            return None
        counted = {"drop-first": " after the first, as dense_flow stores them",
                   "drop-last": " before the last, whose flow the last frame's needs"}.get(cfg.align, "")
        need = "more than" if cfg.short_videos == "reject" else "at least"
        return (f"{video.source}: {frames} frames{counted}; --short-videos {cfg.short_videos} needs {need} "
                f"--window {cfg.window}")

    def _finish_flow(self, windower: Windower) -> list[tuple[int, np.ndarray]]:
        if self.cfg.align != "repeat-last":  # T - 1 frames and T - 1 flows: nothing to repeat
            return windower.finish()
        # T frames gave T - 1 flows: repeat the last (or, padding 'still', no motion) so the flow stream has T frames
        last = windower.frames[-1] if windower.frames else None
        if last is not None and self.cfg.per_frame and self.cfg.pad == "still":
            last = np.zeros_like(last)
        ready = windower.push(np.asarray(last)[None]) if last is not None else []
        return ready + windower.finish()

    def _enqueue(self, index: int, stream: str, windows: list[tuple[int, np.ndarray]]) -> None:
        state = self.states[index]
        size = self.recipes[stream].crop
        for row, window in windows:
            # frames already crop-sized (centre-cropped by the decoder for one crop) give every box at (0, 0)
            boxes = crop_boxes(window.shape[1], window.shape[2], size, self.cfg.crops, self.cfg.crop_order)
            for crop, box in enumerate(boxes):
                key = (stream, window.shape)
                self.queue.setdefault(key, []).append(Pending(index, stream, row, crop, window, box))
                state.outstanding += 1

    def _drop(self, index: int) -> list[int]:
        for key in list(self.queue):
            self.queue[key] = [p for p in self.queue[key] if p.video != index]
        return [index]

    def run_full(self) -> list[int]:
        """Run every full batch; return videos finished by it."""
        done = []
        for key in list(self.queue):
            while len(self.queue.get(key, [])) >= self.cfg.batch:
                done += self._run(key)
        return done + [i for i, s in self.states.items() if s.ended and s.outstanding == 0 and i not in done]

    def flush(self) -> list[int]:
        """Run every partial batch too (nothing else is coming soon); return videos finished."""
        done = []
        for key in list(self.queue):
            while self.queue.get(key):
                done += self._run(key)
        return done + [i for i, s in self.states.items() if s.ended and s.outstanding == 0 and i not in done]

    def _run(self, key: tuple) -> list[int]:
        stream = key[0]
        batch, self.queue[key] = self.queue[key][:self.cfg.batch], self.queue[key][self.cfg.batch:]
        size = self.recipes[stream].crop
        x = to_model_input([p.window for p in batch], [p.box for p in batch], size, stream, self.device,
                           negate_flipped_flow=self.cfg.flip_flow == "negate")
        start = time.perf_counter()
        with torch.inference_mode():
            y = self.models[stream].forward_features(x, self.cfg.endpoint)
            y = pool_features(y, self.cfg.pool).float().cpu().numpy()
        self.model_seconds += time.perf_counter() - start
        self.windows_run += len(batch)
        done = []
        for p, vector in zip(batch, y):
            state = self.states[p.video]
            rows = state.results[p.stream].setdefault(p.row, [None] * self.cfg.crops)
            rows[p.crop] = vector
            state.outstanding -= 1
            if state.ended and state.outstanding == 0:
                done.append(p.video)
        return done

    def arrays(self, index: int) -> dict[str, np.ndarray]:
        """The finished video's feature arrays by output key, and its window times."""
        state, cfg = self.states[index], self.cfg
        info = state.info
        t_prime = window_count(info["frames"], cfg.window, cfg.stride, cfg.per_frame, cfg.tail)
        out: dict[str, np.ndarray] = {}
        for stream, rows in state.results.items():
            if sorted(rows) != list(range(t_prime)):
                raise VideoError(f"{state.video.source}: the {stream} stream gave {len(rows)} windows where its "
                                 f"{info['frames']} frames make {t_prime} (rgb and flow arrays of unequal length?)")
            stacked = np.stack([np.stack(rows[r]) for r in range(t_prime)])  # (T', crops, ...)
            out[stream] = stacked[:, 0] if cfg.crops == 1 else stacked
        if cfg.concat:
            axis = -1 if cfg.pool != "none" else (2 if cfg.crops > 1 else 1)
            out = {"rgb+flow": np.concatenate([out["rgb"], out["flow"]], axis=axis)}
        out = {k: v.astype(cfg.dtype) for k, v in out.items()}
        if cfg.crops > 1 and cfg.per_crop_files:
            out = {f"{k}__{c}": np.ascontiguousarray(v[:, c]) for k, v in out.items() for c in range(cfg.crops)}
        elif cfg.crops > 1 and cfg.crops_first:
            out = {k: np.ascontiguousarray(np.moveaxis(v, 1, 0)) for k, v in out.items()}
        first = 1 / info["fps"] if cfg.align == "drop-first" else 0.0  # row 0 starts at the video's second frame
        starts = window_starts(info["frames"], cfg.window, cfg.stride, cfg.per_frame, info["fps"], cfg.tail) + first
        if cfg.time_files == "seconds":
            out["times"] = starts
        else:  # video_features: the rate, and the time the frame after each window's frames begins (its end), in ms
            out["fps"] = np.array(info["fps"], dtype=np.float64)
            out["timestamps_ms"] = (starts + (1 if cfg.per_frame else cfg.window) / info["fps"]) * 1000
        return out

    def close(self, index: int) -> None:
        """Forget a written video."""
        self.states.pop(index, None)
