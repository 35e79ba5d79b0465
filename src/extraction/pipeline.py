"""The features job: check the job, plan it (this shard's videos less those already done), report the plan, then
decode, batch and write every video left, each failure logged and the rest going on.

Layout written under OUT_DIR (NAME = the input's path relative to the INPUT folder, without extension):
    NAME_rgb.npy, NAME_flow.npy     (T', C) or (T', crops, C); (T', C, t, h, w) ... with pool none
    NAME_rgb+flow.npy               the two streams side by side on the last feature axis (RGB first)
    NAME_times.npy                  (T',) start of each window in seconds (per-frame: the frame's time)
    NAME__k.npy, NAME_fps.npy ...   --per-crop-files (crop k), --time-files video-features (src.extraction.inputs)
    features.csv                    one row per video: recipe, shapes, status (checked when read)
    features-recipe.json            the recipe the folder was started with: a job with another one is refused
The window maths is in src.extraction.windows.
"""
from __future__ import annotations

import glob
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from src.extraction.batching import Extractor
from src.extraction.config import ExtractionError, FeatureConfig, resolve_fps
from src.extraction.decoding import Decoders, decode_failure, iter_source
from src.extraction.flow_stage import FlowStage, flow_in_parent
from src.extraction.inputs import Video, find_inputs, output_paths, prepare_feature_dir, shard_videos
from src.extraction.records import (CSV_NAME, Records, check_finished, check_recipe, feature_row, load_records,
                                    recipe_conflict, update_csv)
from src.flow.choice import cpu_speeds
from src.flow.guard import guarded_tvl1
from src.jobs import PARTIAL_SUFFIX, save_array_atomic
from src.media.video import VideoError

Log = Callable[[str], object]


@dataclass
class Summary:
    """What a run did."""

    done: int = 0
    skipped: int = 0
    failed: int = 0
    seconds: float = 0.0
    model_seconds: float = 0.0
    windows: int = 0


@dataclass
class ExtractionPlan:
    """The videos of the INPUTs, this shard's share, and what becomes of each: failed already, skipped or to do."""

    videos: list[Video]
    mine: list[Video]
    todo: list[Video] = field(default_factory=list)
    failed: dict[str, dict[str, str]] = field(default_factory=dict)  # rows of inputs that failed before any work
    skipped: int = 0
    warnings: list[str] = field(default_factory=list)  # rows of features.csv not trusted


def check_job(inputs: list[str | Path], out_dir: Path, cfg: FeatureConfig) -> tuple[FeatureConfig, list[Video], Records]:
    """Everything that can be wrong with the whole job, before any work: the options, the inputs, OUT_DIR and
    the recipe of features already there; return the config (its frame rate resolved), the videos and what
    features.csv holds."""
    cfg.validate()
    cfg = replace(cfg, fps=resolve_fps(cfg))
    videos = find_inputs(inputs)
    prepare_feature_dir(out_dir)
    records = load_records(out_dir)
    conflict = None if cfg.overwrite else recipe_conflict(records.rows, cfg)
    if conflict:
        raise ExtractionError(f"{out_dir}: its features were made with {conflict}; use another --out-dir "
                              "or --overwrite")
    check_recipe(out_dir, cfg)  # early, as a courtesy: the recipe is recorded (and checked again) once models load
    return cfg, videos, records


def plan_job(videos: list[Video], records: Records, out_dir: Path, cfg: FeatureConfig) -> ExtractionPlan:
    """This shard's videos, each failed (a bad input), skipped (done by an earlier run) or to do."""
    plan = ExtractionPlan(videos, shard_videos(videos, cfg.shard), warnings=list(records.warnings))
    for video in plan.mine:
        for path in output_paths(out_dir, video.name, cfg).values():
            for stale in path.parent.glob(f"{glob.escape(path.name)}.*{PARTIAL_SUFFIX}"):
                stale.unlink(missing_ok=True)  # left by a killed run; never a complete array
        if video.error:
            plan.failed[video.name] = feature_row(video, cfg, f"failed: {video.error}", out_dir=out_dir)
        else:
            finished, warning = check_finished(records.rows, video, out_dir, cfg)
            if warning:
                plan.warnings.append(warning)
            if finished:
                plan.skipped += 1
            else:
                plan.todo.append(video)
    return plan


def report_plan(plan: ExtractionPlan, out_dir: Path, cfg: FeatureConfig, log: Log) -> None:
    """A line for each row of features.csv not trusted, one for the plan, and a FAILED line for each bad input."""
    for warning in plan.warnings:
        log(warning)
    shard_note = f"; shard {cfg.shard[0]}/{cfg.shard[1]} has {len(plan.mine)}" if cfg.shard[1] > 1 else ""
    log(f"{len(plan.videos)} videos{shard_note}; {plan.skipped} already done, {len(plan.todo)} to do -> {out_dir}")
    if plan.failed:
        update_csv(out_dir, plan.failed)
    for row in plan.failed.values():
        log(f"FAILED {row['status'][len('failed: '):]}")


class Execution:
    """The work on the videos to do: decode them (here or in decoding processes), run the models on batches
    gathered across videos, and write each video once its last window is done."""

    def __init__(self, todo: list[Video], out_dir: Path, cfg: FeatureConfig, summary: Summary,
                 extractor: Extractor, stage: FlowStage | None = None) -> None:
        self.todo, self.out_dir, self.cfg, self.summary, self.extractor = todo, out_dir, cfg, summary, extractor
        self.stage = stage  # flow computed here across videos, or None (the decoders compute it)
        self.remaining = set(range(len(todo)))
        self.bar = tqdm(total=len(todo), unit="video", desc="features", dynamic_ncols=True)
        self.start = time.perf_counter()

    def _fail(self, video: Video, message: str, info: dict | None = None) -> dict[str, str]:
        self.summary.failed += 1
        self.bar.write(f"FAILED {message}")
        return feature_row(video, self.cfg, f"failed: {message}", info, out_dir=self.out_dir)

    def finish(self, index: int) -> None:
        """Write one finished (or failed) video's arrays and its row of features.csv."""
        state = self.extractor.states[index]
        video, cfg = state.video, self.cfg
        if state.failed:
            row = self._fail(video, state.failed)
        else:
            try:
                arrays = self.extractor.arrays(index)
                paths = output_paths(self.out_dir, video.name, cfg)
                for key, array in arrays.items():
                    save_array_atomic(paths[key], array)
                warnings = " | ".join(state.info.get("warnings", []))
                t_prime = len(arrays["times"] if "times" in arrays else arrays["timestamps_ms"])
                row = feature_row(video, cfg, "ok", state.info, t_prime, self.out_dir, warnings)
                self.summary.done += 1
                if warnings:
                    self.bar.write(f"warning: {warnings}")
            except VideoError as exc:
                row = self._fail(video, str(exc), state.info)
            except OSError as exc:
                row = self._fail(video, f"{video.source}: cannot write its features ({exc})", state.info)
        update_csv(self.out_dir, {video.name: row})
        self.extractor.close(index)
        self.bar.update(1)
        self.bar.set_postfix_str(f"{self.bar.n / (time.perf_counter() - self.start) * 3600:.0f} videos/h",
                                 refresh=False)

    def settle(self, done: list[int]) -> None:
        """Finish each video of `done` not finished yet."""
        for index in dict.fromkeys(done):
            if index in self.remaining:
                self.remaining.discard(index)
                self.finish(index)

    def deliver(self, index: int, kind: str, payload) -> None:
        """One decoder message to the model side (through the flow stage, when flow is computed here)."""
        messages = self.stage.feed(index, kind, payload) if self.stage else [(index, kind, payload)]
        for message in messages:
            self.settle(self.extractor.feed(*message))

    def idle(self) -> None:
        """Nothing new to decode for now: run the flow and the model on whatever is queued."""
        for message in self.stage.flush() if self.stage else []:
            self.settle(self.extractor.feed(*message))
        self.settle(self.extractor.flush())

    def decode_here(self) -> None:
        """Decode each video in this process, in turn, feeding the model as the frames come."""
        for index, video in enumerate(self.todo):
            self.extractor.open(index, video)
            try:
                for kind, payload in iter_source(video, self.cfg, self.extractor.recipes, self.stage is not None):
                    self.deliver(index, kind, payload)
            except Exception as exc:  # one broken input must not stop the others
                self.deliver(index, "failed", decode_failure(video, exc))
        self.idle()

    def decode_in(self, decoders: Decoders) -> None:
        """Decode in worker processes while the model runs here; a crashed decoder fails its video only."""
        extractor = self.extractor
        for index, video in enumerate(self.todo):
            extractor.open(index, video)
        decoders.submit([(index, video, extractor.recipes) for index, video in enumerate(self.todo)])
        while self.remaining:
            message = decoders.get(timeout=0.05)
            if message is not None:
                self.deliver(*message)
                continue
            self.idle()  # the decoders are behind: run what is queued meanwhile
            for lost, code in decoders.reap():
                if lost in self.remaining:
                    self.deliver(lost, "failed", f"{self.todo[lost].source}: the decoding process died "
                                                 f"(exit code {code})")
            if self.remaining and not decoders.any_alive():
                while (message := decoders.get(timeout=1.0)) is not None:  # what the last decoders sent
                    self.deliver(*message)
                self.idle()
                for i in sorted(self.remaining):
                    self.deliver(i, "failed", f"{self.todo[i].source}: not decoded (no decoding process left)")

    def close(self) -> None:
        """Close the progress bar and fill in the timings."""
        self.bar.close()
        self.summary.seconds = time.perf_counter() - self.start
        self.summary.model_seconds = self.extractor.model_seconds
        self.summary.windows = self.extractor.windows_run


def extract_videos(todo: list[Video], out_dir: Path, cfg: FeatureConfig, summary: Summary, log: Log) -> None:
    """Load the models (the decoders start first, so their start-up overlaps it) and extract every video to do."""
    here = flow_in_parent(cfg)
    if "flow" in cfg.streams and not here:
        cpu_speeds()  # measured once, here: each decoder's FlowExtractor picks OpenCV's TV-L1 or the port by it
        guarded_tvl1("cpu", "pytorch")  # and the port checked here once per machine: the decoders never check
    decoders = Decoders(cfg, min(cfg.workers, len(todo)), here) if cfg.workers else None
    try:
        extractor = Extractor(cfg)
        check_recipe(out_dir, cfg, record=True)  # before any video: a shard started meanwhile may have another
        log(f"{extractor.path}; streams {','.join(cfg.streams)}, {cfg.crops} crop(s), batch {cfg.batch}")
        stage = FlowStage(cfg, extractor.recipes["flow"].flow_algorithm, extractor.recipes["flow"].crop) \
            if here else None
        if stage:
            log(stage.describe())
        execution = Execution(todo, out_dir, cfg, summary, extractor, stage)
        try:
            if decoders is None:
                execution.decode_here()
            else:
                execution.decode_in(decoders)
        finally:
            execution.close()
    finally:
        if decoders is not None:
            decoders.close()


def run(inputs: list[str | Path], out_dir: Path, cfg: FeatureConfig, log: Log = print) -> Summary:
    """Extract features of every video of the INPUTs into OUT_DIR (this shard's share); return a summary."""
    out_dir = Path(out_dir)
    cfg, videos, records = check_job(inputs, out_dir, cfg)
    plan = plan_job(videos, records, out_dir, cfg)
    summary = Summary(skipped=plan.skipped, failed=len(plan.failed))
    report_plan(plan, out_dir, cfg, log)
    if not plan.todo:
        return summary
    extract_videos(plan.todo, out_dir, cfg, summary, log)
    log(f"wrote {out_dir / CSV_NAME}: {summary.done} done, {summary.skipped} skipped, {summary.failed} failed "
        f"in {summary.seconds:.1f} s (model {summary.model_seconds:.1f} s, {summary.windows} clips)")
    return summary
