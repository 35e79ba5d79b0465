"""The pre-processing job: check, find the items, lock OUT_DIR, plan, report, then execute (workers, or batched flow).

Layout written under OUT_DIR:
    classes.txt                                   one class per line, sorted; line number = label index
    <split>/<class>/<item>/rgb-SampleRate_<n>.npy  (T, H, W, 3) in [-1, 1] (stored as --dtype)
    <split>/<class>/<item>/flow-SampleRate_<n>.npy (T - 1, H, W, 2) in [-1, 1]: flow between frames t, t+1
    manifest.csv (or manifest-shard<i>of<n>.csv)  one row per item
Every array is written under a temporary name and renamed, so a killed run leaves either complete
files or `.part` files that the next run deletes; items whose arrays all exist are skipped.
"""
from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from src.flow import recipe_name
from src.jobs import (PARTIAL_SUFFIX, FolderLock, LockError, free_bytes, gigabytes, prepare_folder, reason, set_threads,
                      worker_init)
from src.preprocess.batched_flow import BatchedFlow
from src.preprocess.discovery import Discovery, discover, discover_annotations
from src.preprocess.estimates import estimate_bytes
from src.preprocess.item import run_job
from src.preprocess.manifest import (ManifestRecorder, claim_recipe, manifest_conflict, manifest_name,
                                     merge_shard_manifests, read_manifest, write_text)
from src.preprocess.options import JOB, SPLITS, TOOL, Options, PreprocessError
from src.preprocess.plan import FlowPlan, Plan, flow_device, plan_flow, plan_items
from src.preprocess.splits import assign_splits, assign_splits_by_source, shard_by_source, shard_items

Log = Callable[[str], object]


def run(raw_dir: Path, out_dir: Path, opts: Options, log: Log = print, annotations: Path | None = None) -> int:
    """Pre-process RAW_DIR (or the items an annotation file lists over it) into OUT_DIR; return the failures."""
    opts.validate()
    if "flow" in opts.modalities and opts.flow == "tvl1":
        flow_device(opts)  # an unusable --flow-device fails here, before anything is written
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    if out_dir.resolve() == raw_dir.resolve() or raw_dir.resolve() in out_dir.resolve().parents:
        raise PreprocessError(f"{out_dir}: OUT_DIR must not be RAW_DIR or inside it (its arrays would be read as input)")
    found = find_items(raw_dir, opts, log, annotations)
    prepare_out_dir(out_dir)
    lock = FolderLock(out_dir, opts.shard, JOB, TOOL)
    try:
        lock.acquire(when_alone=lambda: remove_stale_temp_files(out_dir))
    except LockError as exc:
        raise PreprocessError(str(exc)) from None
    except OSError as exc:  # e.g. ENOLCK: a file system without locks; go on as before locks existed
        log(f"warning: {out_dir}: cannot be locked ({reason(exc)}); do not run two {TOOL} into it at once")
    try:
        failures = run_locked(raw_dir, out_dir, opts, log, found, annotations)
    finally:
        lock.release()
    if opts.shard[1] > 1:
        log(f"merged the shard manifests present into {merge_shard_manifests(out_dir, opts.shard[1])}")
    return failures


def find_items(raw_dir: Path, opts: Options, log: Log, annotations: Path | None) -> Discovery:
    """The items of RAW_DIR (or of the annotation file), each with its split; the notes on what was skipped logged."""
    found = discover_annotations(annotations, raw_dir, opts.outside_ok) if annotations else discover(raw_dir)
    if annotations and not found.presplit:
        found.notes.append(assign_splits_by_source(found.items, opts.val_ratio, opts.seed))
    for note in found.notes[:20]:
        log(f"note: {note}")
    if len(found.notes) > 20:
        log(f"note: ... and {len(found.notes) - 20} more skipped entries")
    if not found.presplit and not annotations:
        note = assign_splits(found.items, opts.val_ratio, opts.seed)
        if note:
            log(f"note: {note}")
    return found


def prepare_out_dir(out_dir: Path) -> None:
    """Create OUT_DIR, or raise PreprocessError in one line when it cannot be created or written."""
    try:
        prepare_folder(out_dir)
    except OSError as exc:
        raise PreprocessError(f"{out_dir}: OUT_DIR cannot be written ({reason(exc)}); choose a folder you can write to"
                              ) from None


def remove_stale_temp_files(out_dir: Path) -> None:
    """Delete temporary classes.txt / manifest files at OUT_DIR's top: called only when no other run is on it."""
    for tmp in out_dir.glob(f"*{PARTIAL_SUFFIX}"):
        tmp.unlink(missing_ok=True)


def write_classes(out_dir: Path, raw_dir: Path, classes: list[str], overwrite: bool) -> None:
    """OUT_DIR/classes.txt, refusing to replace one that lists other classes unless `overwrite`."""
    text = "".join(f"{c}\n" for c in classes)
    path = out_dir / "classes.txt"
    if path.exists() and path.read_text() != text and not overwrite:
        raise PreprocessError(f"{path} exists with different classes than {raw_dir} holds; use another OUT_DIR "
                              "or --overwrite")
    try:
        write_text(path, text)
    except OSError as exc:
        raise PreprocessError(f"{path}: cannot be written ({reason(exc)}); choose an OUT_DIR you can write to") from None


def describe_job(raw_dir: Path, found: Discovery, mine: int, plan: Plan, opts: Options,
                 annotations: Path | None) -> str:
    """The job in one line: items, classes, the split and where it came from, the shard, what is left to do."""
    n_split = {s: sum(1 for it in found.items if it.split == s) for s in SPLITS}
    split = ", ".join(f"{n} {s}" for s, n in n_split.items() if n)
    if found.presplit:
        split += "; split kept from " + ("the annotations" if annotations else "folders")
    else:
        split += f"; split by --val-ratio {opts.val_ratio} --seed {opts.seed}"
    shard = f"; shard {opts.shard[0]}/{opts.shard[1]} has {mine}" if opts.shard[1] > 1 else ""
    bad = f", {plan.unusable} unusable" if plan.unusable else ""
    return (f"{raw_dir}: {len(found.items)} items in {len(found.classes)} classes ({split}){shard}; "
            f"{plan.done} already done, {len(plan.items)} to do{bad}")


def check_disk(plan: Plan, opts: Options, out_dir: Path, log: Log) -> None:
    """Refuse to start a job whose estimated output does not fit the free space (unless --no-disk-check)."""
    if not plan.jobs or not opts.disk_check:
        return
    need, free = estimate_bytes(plan.items, opts), free_bytes(out_dir)
    log(f"estimated output {gigabytes(need)}; {gigabytes(free)} free at {out_dir}")
    if need > free:
        raise PreprocessError(f"{out_dir}: about {gigabytes(need)} needed but only {gigabytes(free)} free; free space, "
                              "use --dtype uint8 or --crop 224, or pass --no-disk-check")


def run_locked(raw_dir: Path, out_dir: Path, opts: Options, log: Log, found: Discovery,
               annotations: Path | None = None) -> int:
    """The body of `run`, once OUT_DIR is locked for this shard: recipe check, plan, report, execution."""
    manifest_path = out_dir / manifest_name(opts.shard)
    problems: list[str] = []
    previous = read_manifest(manifest_path, problems)
    conflict = None if opts.overwrite else manifest_conflict(previous, opts)
    if conflict:
        raise PreprocessError(f"{out_dir}: its arrays were made with {conflict}; mixing recipes in one dataset "
                              "would skip those items silently; use another OUT_DIR or --overwrite")
    claim_recipe(out_dir, opts)
    write_classes(out_dir, raw_dir, found.classes, opts.overwrite)
    mine = shard_by_source(found.items, opts.shard) if annotations else shard_items(found.items, opts.shard)
    plan = plan_items(mine, out_dir, opts, previous, by_source=annotations is not None)
    for problem in problems + plan.warnings:
        log(f"warning: {problem}")
    workers = min(opts.workers, max(1, len(plan.jobs)))
    log(describe_job(raw_dir, found, len(mine), plan, opts, annotations))
    if "flow" in opts.modalities and recipe_name(opts.flow) != "tvl1":
        log(f"warning: --flow {opts.flow}: the pretrained I3D flow stream was trained on TV-L1 flow; other flow "
            "has different statistics (fine-tune, do not just evaluate)")
    check_disk(plan, opts, out_dir, log)
    flow = plan_flow(opts, plan, workers)
    for row in plan.rows.values():
        if row.get("status") == "failed":
            log(f"FAILED {row['message']}")
    bar = tqdm(total=len(plan.items), desc="items", unit="item", position=0)
    recorder = ManifestRecorder(manifest_path, previous, dict(plan.rows), bar)
    try:
        execute(plan, opts, flow, workers, recorder, bar)
    finally:
        bar.close()
        recorder.save()  # rows of items outside this run (other RAW_DIR content or removed sources) are kept
    log(f"wrote {manifest_path}: {len(recorder.rows) - recorder.failures} items ok, {recorder.failures} failed")
    return recorder.failures


def execute(plan: Plan, opts: Options, flow: FlowPlan, workers: int, recorder: ManifestRecorder, bar: tqdm) -> None:
    """Run the jobs: batched flow here while workers decode, or whole jobs in this process or in worker processes."""
    cores = os.cpu_count() or 1
    if flow.batched:
        set_threads(1 if flow.device == "cpu" and flow.compiled else cores)  # compiled: 5-10x slower on 2 threads
    if flow.describe(workers):
        bar.write(f"flow: {flow.describe(workers)}")
    if flow.batched:
        BatchedFlow(plan.jobs, opts, flow, workers, recorder.record).run()
    elif workers == 1:
        set_threads(1 if flow.compiled else cores)  # the compiled kernels measured 5-10x slower on 2 threads
        for job in plan.jobs:
            for row in run_job(job, opts, flow, show_frames=True):
                recorder.record(row)
    else:
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=worker_init,
                                 initargs=(max(1, cores // workers), os.getpid())) as pool:
            futures = [pool.submit(run_job, job, opts, flow) for job in plan.jobs]
            try:
                for future in as_completed(futures):
                    for row in future.result():
                        recorder.record(row)
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
