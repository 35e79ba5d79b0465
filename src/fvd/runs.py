"""The metrics job: each set's clips under its protocol (for every trial's seed), every distinct clip through the
network once, the metrics per trial, their mean and standard deviation; activations saved, sharded and merged.

`--protocol tf` with only FVD and no activations runs src/fvd/pipeline.py's job (unchanged); everything else
runs here. A side may be videos, an activations file (or shards of one, comma-separated) or cd-fvd statistics.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from src.clips import InputError
from src.fvd.activation_files import ActivationSet, open_activations, save_activations
from src.fvd.activations import Embedding, full_float32
from src.fvd.clips import read_clips
from src.fvd.inputs import VideoSet, open_set
from src.fvd.cdfvd import LABEL, open_cdfvd
from src.fvd.metrics import DEFINITIONS, compute_metrics, frechet, mean_covariance, summarise
from src.fvd.pipeline import ClipReaders, RunOptions, embed_clips
from src.fvd.protocol import Protocol
from src.fvd.recipes import Recipe, recipe
from src.fvd.sampling import (Pick, min_length, needs_lengths, pick_clips, read_pick, video_clips, video_length,
                              warn_if_few_windows, warn_if_small)
from src.fvd.statistics import toolkit_version
from src.jobs.shards import take_shard

log = logging.getLogger(__name__)
ROLES = ("real", "generated")


@dataclass
class MetricsResult:
    """Each metric (mean over trials, and *_std), per-trial values, and everything they were computed under."""

    metrics: dict[str, float]
    per_trial: list[dict[str, float]]
    protocol: Protocol
    recipe: Recipe
    seeds: list[int]
    n_a: int
    n_b: int
    weights_sha256: str
    path: str
    seconds: float
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        """JSON-ready: each metric under its name, then the protocol, its definitions and the run."""
        protocol = self.protocol.as_dict()
        r = self.recipe
        steps = (self.protocol.subsample or r.subsample_real, self.protocol.subsample or r.subsample_generated)
        definitions = {name: DEFINITIONS[name].format(covariance=r.covariance, sqrtm=r.sqrtm, d=400)
                       for name in self.per_trial[0]}
        return {**self.metrics, "n_a": self.n_a, "n_b": self.n_b, "frames": protocol.pop("frames"),
                "protocol": protocol.pop("name"), **protocol, "subsample_real": steps[0],
                "subsample_generated": steps[1], "covariance": r.covariance, "sqrtm": r.sqrtm, "resize": r.resize,
                "trials": len(self.seeds), "seeds": self.seeds, "per_trial": self.per_trial,
                "definitions": definitions, "provenance": dict(r.provenance), "weights": "rgb_scratch", "weights_sha256": self.weights_sha256,
                "model": self.path, "tf32": False, **self.extra, "seconds": round(self.seconds, 3)}


def ordered_reads(readers: ClipReaders, jobs: list[tuple], function, array: np.ndarray | None,
                  batch: int = 0) -> Iterator:
    """function(*job) for every job, in order, in the worker processes (here for array rows), 2 per worker ahead
    and at least `batch` (a network batch of one-clip jobs is read while the previous batch runs)."""
    if readers.pool is None or array is not None:
        for job in jobs:
            yield function(*job, array) if array is not None else function(*job)
        return
    ahead: list = []
    position = 0
    try:
        while position < len(jobs) or ahead:
            while position < len(jobs) and len(ahead) < max(2 * readers.count, batch):
                ahead.append(readers.pool.submit(function, *jobs[position]))
                position += 1
            yield ahead.pop(0).result()
    finally:
        for future in ahead:
            future.cancel()


@dataclass
class SetClips:
    """One set's distinct clips (keys, in order), the positions of each trial's clips, and its shard."""

    keys: list
    trials: list[list[int]]
    mine: list[int]  # positions of the clips this shard computes


def plan_set(video_set: VideoSet, protocol: Protocol, r: Recipe, role: str, videos: int | None, seeds: list[int],
             shard: tuple[int, int], readers: ClipReaders) -> SetClips:
    """Which clips each trial takes from one set, merged into one list of distinct clips (frame counts, where the
    protocol needs them, are counted in the worker processes)."""
    items = video_set.items
    names = [item.name for item in items]
    if protocol.name == "tf":
        keys = [(i, k) for i in range(len(items)) for k in range(protocol.clips_per_video)]
        trials = [list(range(len(keys)))]
    else:
        lengths = None
        if needs_lengths(r, role):
            jobs = [(item, protocol.fps) for item in items]
            lengths = list(ordered_reads(readers, jobs, video_length, video_set.array))
        step = protocol.subsample or (r.subsample_real if role == "real" else r.subsample_generated)
        if lengths is not None and (r.real_clip if role == "real" else r.generated_clip) == "window":
            warn_if_few_windows(video_set.spec, lengths, protocol.frames, step, videos, protocol.name)
        per_trial = [pick_clips(len(items), lengths, r, role, protocol.frames, step, videos, seed, names)
                     for seed in seeds]
        keys = sorted({p for picks in per_trial for p in picks}, key=lambda p: (p.video, p.frames))
        position = {k: i for i, k in enumerate(keys)}
        trials = [[position[p] for p in picks] for picks in per_trial]
    chosen = set(take_shard(sorted({k[0] if isinstance(k, tuple) else k.video for k in keys}), shard,
                            key=lambda i: names[i]))
    mine = [i for i, k in enumerate(keys) if (k[0] if isinstance(k, tuple) else k.video) in chosen]
    return SetClips(keys, trials, mine)


def streams(protocol: Protocol, r: Recipe, role: str, videos: int | None, count: int, shard: tuple[int, int]) -> bool:
    """Whether a set's clips can be chosen video by video as they are decoded (one decode each, overlapping the
    network): 'start' or 'offset' clips of the first N videos, and not one shard of several."""
    how = r.real_clip if role == "real" else r.generated_clip
    first = (r.real_videos if role == "real" else r.generated_videos) == "first" or videos is None or count <= videos
    return protocol.name != "tf" and shard == (1, 1) and how in ("start", "offset") and first


def stream_set(video_set: VideoSet, protocol: Protocol, r: Recipe, role: str, videos: int | None, seeds: list[int],
               embedding: Embedding, readers: ClipReaders, options: RunOptions, label: str
               ) -> tuple[np.ndarray, SetClips]:
    """Activations of one set's clips chosen as each video is decoded: the first N videos long enough."""
    step = protocol.subsample or (r.subsample_real if role == "real" else r.subsample_generated)
    minimum = min_length(r, role, protocol.frames, step)
    how = r.real_clip if role == "real" else r.generated_clip
    jobs = [(item, i, protocol.fps, role, seeds, protocol.frames, step, minimum, role == "real" and r.drop_short, how)
            for i, item in enumerate(video_set.items)]
    keys: list[Pick] = []
    trials: list[list[int]] = [[] for _ in seeds]

    def clips() -> Iterator[np.ndarray]:
        results = ordered_reads(readers, jobs, video_clips, video_set.array, options.batch)
        kept = 0
        try:
            for i, result in enumerate(results):
                if result is None:
                    continue
                picks, distinct = result
                position = {}
                for frames, clip in distinct:
                    position[frames] = len(keys)
                    keys.append(Pick(i, frames))
                    yield clip
                for t, frames in enumerate(picks):
                    trials[t].append(position[frames])
                kept += 1
                if videos is not None and kept == videos:
                    return
        finally:
            results.close()
        if not kept:
            raise InputError(f"{video_set.spec}: every video is shorter than {minimum} frames ({protocol.frames} "
                             f"frames, step {step})")

    acts = embed_clips(clips(), embedding, options, f"{label} {video_set.spec}".strip())
    return acts, SetClips(keys, trials, list(range(len(keys))))


def clip_name(video_set: VideoSet, key) -> list:
    """[video name, frames] of a sampled clip, [video name, clip number] of a tf clip."""
    if isinstance(key, Pick):
        return [video_set.items[key.video].name, list(key.frames)]
    return [video_set.items[key[0]].name, key[1]]


def set_activations(video_set: VideoSet, protocol: Protocol, plan: SetClips, embedding: Embedding,
                    readers: ClipReaders, options: RunOptions, label: str) -> np.ndarray:
    """Activations (len(plan.mine), d) of this shard's clips of one set, in plan order."""
    keys = [plan.keys[i] for i in plan.mine]
    if protocol.name == "tf":
        videos = sorted({k[0] for k in keys})
        jobs = [(video_set.items[i], protocol, i) for i in videos]
        clips = (c for batch in ordered_reads(readers, jobs, read_clips, video_set.array) for c in batch)
    else:
        jobs = [(video_set.items[k.video], k.frames, protocol.fps) for k in keys]
        clips = ordered_reads(readers, jobs, read_pick, video_set.array, options.batch)
    return embed_clips(clips, embedding, options, f"{label} {video_set.spec}".strip(), len(keys))


def check_loaded(data: ActivationSet, protocol: Protocol, role: str, trials: int, name: str) -> None:
    """Refuse activations of another protocol or network, of the other role, or with too few trials (one line)."""
    differences = protocol.differences(data.protocol)
    if differences:
        raise InputError(f"{name}: activations computed under another protocol ({'; '.join(differences)} here)")
    if data.role != role and protocol.name != "tf":
        raise InputError(f"{name}: activations of the {data.role} set given as the {role} one; their clips were "
                         "picked as the other set's")
    if len(data.trials) < trials:
        raise InputError(f"{name}: holds {len(data.trials)} trial(s) of clips; --trials {trials} needs that many "
                         "(recompute with --trials)")


def run_metrics(spec_a: str, spec_b: str | None, protocol: Protocol, options: RunOptions,
                metrics: tuple[str, ...] = ("fvd",), trials: int | None = None, save: tuple[str | Path, ...] = (),
                shard: tuple[int, int] = (1, 1), allow_mixed: bool = False) -> MetricsResult | list[ActivationSet]:
    """The metrics between A (real) and B (generated) under `protocol`, over `trials` seeds (the recipe's default
    when None); with `spec_b` None or a shard other than 1/1, only the activations (saved to `save`).

    A side that is a cd-fvd .pkl is compared only with `allow_mixed` (its network and preprocessing are cd-fvd's).
    """

    start = time.perf_counter()
    r = recipe(protocol.name)
    trials = trials or r.trials
    if protocol.name == "tf" and trials != 1:
        raise InputError("--trials: protocol tf takes fixed clips (or one draw per --seed); trials apply to the "
                         "sampled protocols")
    seeds = [protocol.seed + t if protocol.seed is not None else 0 for t in range(trials)]
    videos = options.max_videos if options.max_videos is not None else r.videos
    if protocol.name == "tf":
        videos = None  # open_set applied --max-videos
    specs = [s for s in (spec_a, spec_b) if s is not None]
    loaded: dict[int, ActivationSet] = {}
    stats = {}
    sets: dict[int, VideoSet] = {}
    for i, spec in enumerate(specs):
        cd = open_cdfvd(spec)
        if cd is not None:
            if not allow_mixed:
                raise InputError(f"{spec}: statistics made by {LABEL}, not under protocol {protocol.name}; add "
                                 "--allow-mixed-protocols to compare them anyway (the number is then no protocol's)")
            log.warning("%s: statistics made by %s, compared under protocol %s: a mixed number", spec, LABEL,
                        protocol.name)
            stats[i] = cd
            continue
        data = open_activations(spec)
        if data is not None:
            check_loaded(data, protocol, ROLES[i], trials, spec)
            loaded[i] = data
            continue
        sets[i] = open_set(spec, options.max_videos if protocol.name == "tf" else None, order=r.order)
        if sets[i].is_stats:
            raise InputError(f"{spec}: a statistics file holds no activations; --metrics, --trials and the sampled "
                             "protocols need videos or an activations file (--save-activations)")
        if protocol.name != "tf" and (r.real_clip if i == 0 else r.generated_clip) != "window":
            warn_if_small(spec, len(sets[i].items), videos, protocol.name)  # windows are counted in plan_set
    if stats and (set(metrics) != {"fvd"} or trials != 1):
        raise InputError("cd-fvd statistics hold a mean and covariance only: --metrics fvd and one trial")
    weights = {d.weights_sha256 for d in loaded.values()}
    embedding, readers, path = None, None, "activations files"
    results: dict[int, ActivationSet] = dict(loaded)
    try:
        with full_float32():
            for i, video_set in sets.items():
                if embedding is None:
                    readers = ClipReaders(options.workers)  # first: the workers start while the model loads
                    embedding = Embedding(options.device, options.precision, options.compile, protocol.network,
                                          r.resize)
                    path = embedding.path
                    weights.add(embedding.weights_sha256)
                label = "AB"[i] if len(specs) > 1 else "A"
                if streams(protocol, r, ROLES[i], videos, len(video_set.items), shard):
                    acts, plan = stream_set(video_set, protocol, r, ROLES[i], videos, seeds, embedding, readers,
                                            options, label)
                else:
                    plan = plan_set(video_set, protocol, r, ROLES[i], videos, seeds, shard, readers)
                    acts = set_activations(video_set, protocol, plan, embedding, readers, options, label)
                results[i] = ActivationSet(acts, np.asarray(plan.mine, np.int64), protocol, embedding.weights_sha256,
                                           video_set.spec, ROLES[i], [clip_name(video_set, plan.keys[j])
                                                                      for j in plan.mine], len(plan.keys),
                                           plan.trials, shard)
                if i < len(save):
                    save_activations(results[i], save[i], toolkit_version())
            if len(weights) > 1:
                raise InputError(f"{', '.join(specs)}: activations of different weights (tensors' sha256 "
                                 f"{', '.join(w[:12] + '...' for w in sorted(weights))})")
            if len(specs) == 1 or shard != (1, 1):
                return [results[i] for i in sorted(results)]
            per_trial = []
            for t in range(trials):
                a, b = (results[i].trial(t) if i in results else None for i in range(2))
                if stats:
                    sides = [(stats[i].mean, stats[i].covariance) if i in stats else mean_covariance(x, r.covariance)
                             for i, x in enumerate((a, b))]
                    per_trial.append({"fvd": frechet(*sides[0], *sides[1], sqrtm=r.sqrtm)})
                else:
                    per_trial.append(compute_metrics(a, b, metrics, r.covariance, r.sqrtm))
    finally:
        if readers is not None:
            readers.close()
    n = [len(results[i].trials[0]) if i in results else stats[i].n for i in range(2)]
    extra = {"mixed": [f"{stats[i].path}: {LABEL}" for i in stats]} if stats else {}
    return MetricsResult(summarise(per_trial), per_trial, protocol, r, seeds, n[0], n[1], weights.pop() if weights
                         else "", path, time.perf_counter() - start, extra)
