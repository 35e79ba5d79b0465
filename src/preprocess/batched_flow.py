"""Batched flow: workers decode items while this process computes their flow in batches of pairs across items,
so the flow device (a GPU, usually) never waits for one clip."""
from __future__ import annotations

import os
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm import tqdm

from src.flow import FlowExtractor
from src.flow.pairs import PairChunk, pending_pairs, take_pairs
from src.jobs import save_array_atomic, worker_init
from src.media import center_crop, encode_array
from src.preprocess.item import process_item
from src.preprocess.manifest import shapes_on_disk
from src.preprocess.options import Options
from src.preprocess.plan import FlowPlan, Job


@dataclass(kw_only=True)
class ClipFlow(PairChunk):
    """An item whose frames are decoded and whose flow pairs are being computed in batches."""

    row: dict[str, str]
    paths: dict[str, Path]


def decode_job(job: Job, opts: Options, flow: FlowPlan) -> tuple[dict[str, str], np.ndarray | None]:
    """Worker half: decode, resize and write rgb of a whole item; its row and the grayscale frames left for flow."""
    return process_item(job.items[0], job.paths[0], opts, flow)


class BatchedFlow:
    """Runs whole-item jobs: decoding in `workers` processes, flow here in calls of `extractor.pairs_per_call` pairs."""

    def __init__(self, jobs: list[Job], opts: Options, flow: FlowPlan, workers: int,
                 record: Callable[[dict[str, str]], None]) -> None:
        self.jobs, self.opts, self.flow, self.workers, self.record = iter(jobs), opts, flow, workers, record
        self.extractor: FlowExtractor = flow.extractor()
        self.call = self.extractor.pairs_per_call
        self.paths = {str(job.source): job.paths[0] for job in jobs}
        self.clips: deque[ClipFlow] = deque()
        self.inflight: set[Future] = set()
        self.ahead = workers + 2  # decoded items waiting for flow are bounded (memory)
        self.bar = tqdm(desc=f"flow pairs ({self.extractor.describe()})", unit="pair", position=1, leave=False)

    def refill(self, pool: ProcessPoolExecutor) -> None:
        """Hand more items to the decoders while few are decoded or decoding."""
        while len(self.inflight) + len(self.clips) < self.ahead:
            job = next(self.jobs, None)
            if job is None:
                return
            self.inflight.add(pool.submit(decode_job, job, self.opts, self.flow))

    def take(self, future: Future) -> None:
        """A decoded item: queue its pairs (or record its final row: failed, or no flow to compute)."""
        row, gray = future.result()
        if gray is None:
            self.record(row)
            return
        crop = (self.opts.crop, self.opts.crop) if self.opts.crop else gray.shape[1:]
        out = np.empty((len(gray) - 1, *crop, 2), np.dtype(self.opts.dtype))
        clip = ClipFlow(gray, out, row=row, paths=self.paths[row["source"]])
        if not len(clip.out):
            self.finish(clip)
            return
        self.clips.append(clip)
        self.bar.total = (self.bar.total or 0) + len(clip.out)
        self.bar.refresh()

    def one_batch(self) -> None:
        """Compute one batch of pairs (of one frame size) and finish the items it completes."""
        chosen, prev, nxt = take_pairs(self.clips, self.call)
        try:
            flows = self.extractor.batch(prev, nxt)
        except Exception as exc:  # a device failure fails these items, the batch goes on
            flows = None
            for clip in {id(c): c for c, _ in chosen}.values():
                message = f"{clip.row['source']}: flow failed: {type(exc).__name__}: {exc}"
                clip.row.update(status="failed", message=message)
                clip.done = clip.queued = len(clip.out)
        if flows is not None:
            for (clip, i), flow in zip(chosen, flows):
                cropped = center_crop(flow, self.opts.crop) if self.opts.crop else flow
                clip.out[i] = encode_array(cropped, self.opts.dtype)
                clip.done += 1
        self.bar.update(len(chosen))
        while self.clips and self.clips[0].finished:
            self.finish(self.clips.popleft())
        for clip in [c for c in self.clips if c.finished]:
            self.clips.remove(clip)
            self.finish(clip)

    def finish(self, clip: ClipFlow) -> None:
        """Write an item's flow array and record its row."""
        if clip.row.get("status") != "failed":
            try:
                save_array_atomic(clip.paths["flow"], clip.out)
                clip.row.update(status="done")
                clip.row.update(shapes_on_disk(clip.paths))
            except OSError as exc:
                clip.row.update(status="failed", message=f"{clip.row['source']}: writing flow failed: {exc}")
        self.record(clip.row)

    def run(self) -> None:
        """Decode and compute flow until every job is done."""
        with ProcessPoolExecutor(self.workers, mp_context=get_context("spawn"), initializer=worker_init,
                                 initargs=(1, os.getpid())) as pool:
            try:
                self.refill(pool)
                while self.inflight or self.clips:
                    block = pending_pairs(self.clips) < self.call and self.inflight
                    done, _ = wait(self.inflight, timeout=None if block else 0, return_when=FIRST_COMPLETED)
                    for future in done:
                        self.inflight.discard(future)
                        self.take(future)
                    self.refill(pool)
                    if self.clips and (pending_pairs(self.clips) >= self.call or not self.inflight):
                        self.one_batch()
                        self.refill(pool)
            except BaseException:
                for future in self.inflight:
                    future.cancel()
                raise
            finally:
                self.bar.close()
