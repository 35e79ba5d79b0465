"""The plan of a job: where each item's arrays go, which items are done already, the jobs left (one decode of
one source each), and where and how flow is computed — decided once, by `plan_flow`, into one FlowPlan."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from src.flow import COMPILE_MIN_PAIRS, FlowExtractor
from src.flow.choice import choose_cpu_tvl1, cpu_speeds
from src.flow.guard import forced_backend, guarded_tvl1
from src.guard import forced_flow_backend
from src.jobs import PARTIAL_SUFFIX
from src.paths import ITEM_LABELS_FILE
from src.preprocess.discovery import RawItem
from src.preprocess.estimates import planned_pairs, planned_pixels
from src.preprocess.manifest import base_row, shapes_on_disk
from src.preprocess.options import Options, PreprocessError


def item_paths(out_dir: Path, item: RawItem, opts: Options) -> dict[str, Path]:
    """Where each requested modality of an item is stored."""
    folder = Path(out_dir) / str(item.split) / item.cls / item.name
    return {m: folder / f"{m}-SampleRate_{opts.sample_rate}.npy" for m in opts.modalities}


def unreadable(path: Path) -> str | None:
    """Why an existing array file cannot be read back whole (None when it can, or does not exist)."""
    if not path.exists():
        return None
    try:
        np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        return f"not a complete .npy array ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
    return None


@dataclass
class Job:
    """One decode of one source: the items it gives (one whole item, or the segments cut from it) and their paths."""

    source: Path
    items: list[RawItem] = field(default_factory=list)
    paths: list[dict[str, Path]] = field(default_factory=list)

    @property
    def segmented(self) -> bool:
        """Whether the job cuts segments (rather than writing one whole item)."""
        return any(item.start is not None for item in self.items)


@dataclass
class Plan:
    """Rows of the items needing no work (done, or unusable), the jobs left, and what was found broken on the way."""

    rows: dict[str, dict[str, str]]
    jobs: list[Job]
    done: int
    unusable: int
    warnings: list[str] = field(default_factory=list)

    @property
    def items(self) -> list[RawItem]:
        """Every item the jobs will write."""
        return [item for job in self.jobs for item in job.items]


def plan_items(items: list[RawItem], out_dir: Path, opts: Options, previous: dict[str, dict[str, str]],
               by_source: bool) -> Plan:
    """Which of `items` are done or unusable (their rows), and the jobs for the rest (grouped by source if asked).

    Temporary files a killed run left in an item's folder are removed here: they are never complete arrays.
    """
    rows: dict[str, dict[str, str]] = {}
    jobs: dict[object, Job] = {}
    warnings: list[str] = []
    done = unusable = 0
    for item in items:
        paths = item_paths(out_dir, item, opts)
        folder = next(iter(paths.values())).parent
        if folder.is_dir():
            for stale in folder.glob(f"*{PARTIAL_SUFFIX}"):
                stale.unlink()
        for path in paths.values():
            problem = unreadable(path)
            if problem:  # e.g. copied in part: never a finished array, whatever the manifest says
                warnings.append(f"{path}: {problem}; it is made again")
                path.unlink()
        if item.error:
            rows[item.key] = {**base_row(item, opts), "status": "failed", "message": item.error}
            unusable += 1
        elif not opts.overwrite and all(p.exists() for p in paths.values()) and (
                len(item.labels) < 2 or (folder / ITEM_LABELS_FILE).exists()):
            old = previous.get(item.key)
            rows[item.key] = old if old and old.get("status") != "failed" else \
                {**base_row(item, opts), "status": "done", **shapes_on_disk(paths)}
            done += 1
        else:
            job = jobs.setdefault(item.source if by_source else len(jobs), Job(item.source))
            job.items.append(item)
            job.paths.append(paths)
    return Plan(rows, list(jobs.values()), done, unusable, warnings)


@dataclass(frozen=True)
class FlowPlan:
    """Where and how a job computes flow: None (no flow), in each worker a pair at a time, or in this process in
    batches across items (the PyTorch TV-L1 on a GPU, or with --flow-batch) while the workers decode."""

    algorithm: str | None
    where: str = "workers"  # "workers" or "parent"
    device: str = "cpu"
    batch: int = 1
    compiled: bool = False
    bound: float = 20.0
    implementation: str = ""  # tvl1 on the CPU: "opencv", "eager" or "compiled" (src.flow.choice), all bit-identical
    reason: str = ""  # why that implementation

    @property
    def batched(self) -> bool:
        """Whether the parent computes flow in batches while the workers only decode."""
        return self.algorithm is not None and self.where == "parent"

    def extractor(self) -> FlowExtractor:
        """This plan's flow object, one per process (reused across items)."""
        if self not in _EXTRACTORS:
            if self.implementation == "opencv":
                _EXTRACTORS[self] = FlowExtractor("tvl1-opencv", self.bound)  # the same flow as the port, faster here
            elif self.algorithm == "tvl1":
                _EXTRACTORS[self] = FlowExtractor("tvl1", self.bound, device=self.device, batch_size=self.batch,
                                                  compile=self.compiled)
            else:
                _EXTRACTORS[self] = FlowExtractor(self.algorithm, self.bound)
        return _EXTRACTORS[self]

    def describe(self, workers: int) -> str:
        """What computes flow, in words (None: no line to print)."""
        if self.algorithm != "tvl1":
            return ""
        if self.batched:
            return self.extractor().describe()  # the very object that computes this process's batches
        what = {"opencv": "OpenCV's TV-L1", "compiled": "PyTorch TV-L1 on cpu, compiled"}.get(
            self.implementation, "PyTorch TV-L1 on cpu, eager")
        why = f": {self.reason}" if self.reason else ""
        return f"tvl1 ({what}, a pair at a time in each of {workers} process(es)){why}"


_EXTRACTORS: dict[FlowPlan, FlowExtractor] = {}


def flow_device(opts: Options):
    """The --flow-device of a --flow tvl1 job, checked usable; PreprocessError in one line when it is not."""
    from src.device import usable_device  # imports torch, which the decoding workers never need

    try:
        return usable_device(opts.flow_device)
    except ValueError as exc:
        raise PreprocessError(f"--flow-device {opts.flow_device}: {exc}") from None


def plan_flow(opts: Options, plan: Plan, workers: int) -> FlowPlan:
    """The one decision of where and how flow is computed, read by everything after it.

    The PyTorch TV-L1 runs batched in this process on a GPU (or with --flow-batch on any device), compiled for
    jobs with enough pairs (COMPILE_MIN_PAIRS). On a CPU each worker computes its items' flow a pair at a time
    on one thread, which scales with cores where one process's threads synchronise after every small op, with
    the fastest of OpenCV's TV-L1 and the port, eager or compiled, for this job on this machine
    (src.flow.choice; they are bit-identical there), unless --flow-compile yes/no asks for the port.
    Jobs that cut segments compute flow in their workers.
    """
    if "flow" not in opts.modalities or not plan.jobs:
        return FlowPlan(None)
    if opts.flow != "tvl1":
        return FlowPlan(opts.flow, bound=opts.bound)
    device = flow_device(opts)
    forced = forced_flow_backend()
    if forced:
        try:
            forced_backend(forced, device.type)  # one line now, not a traceback from the first batch
        except ValueError as exc:
            raise PreprocessError(str(exc)) from None
    pairs = planned_pairs(plan.items, opts)
    if not any(job.segmented for job in plan.jobs) and (opts.flow_batch > 0 or device.type != "cpu"):
        compiled = {"yes": True, "no": False}.get(opts.flow_compile, pairs >= COMPILE_MIN_PAIRS.get(device.type, 10**9))
        return FlowPlan("tvl1", "parent", str(device), opts.flow_batch or (1 if device.type == "cpu" else 32),
                        compiled, opts.bound)
    if forced == "triton":
        raise PreprocessError("--flow-backend triton: this job computes flow in its worker processes on the CPU; the "
                              "Triton kernels run on CUDA only")
    if forced == "opencv":
        return FlowPlan("tvl1", bound=opts.bound, implementation="opencv", reason="forced by --flow-backend opencv")
    if opts.flow_compile != "auto" or forced:  # the port, as asked
        implementation, reason = ("compiled" if opts.flow_compile == "yes" else "eager"), ""
    else:
        choice = choose_cpu_tvl1(pairs / workers, planned_pixels(plan.items, opts), cpu_speeds())
        implementation, reason = choice.implementation, choice.reason
    if implementation != "opencv" and not forced:  # the workers never check: the port is checked here, once
        if guarded_tvl1(device, "pytorch")[0] == "opencv":
            implementation, reason = "opencv", "the PyTorch port failed its check against OpenCV on this machine"
    return FlowPlan("tvl1", compiled=implementation == "compiled", bound=opts.bound,
                    implementation=implementation, reason=reason)
