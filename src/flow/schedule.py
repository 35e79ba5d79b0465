"""A schedule for batched TV-L1 that keeps a device busy: static per-level batches of slots, chunks of inner
iterations without host synchronisation, converged pairs skipped on the device, and free slots refilled.

Each pyramid level has a batch of `capacity` slots (fixed shapes: replayable as CUDA graphs). A slot holds one
pair's work at that level; its state lives in two buffers (one read, one written per iteration) and three
per-slot counters on the device: the buffer holding its state, its iterations in the current warp, and whether
it still runs. A chunk is `chunk` iterations of every slot (the median first, for the slots starting an outer
iteration); a slot that has converged does nothing. After each chunk the host reads the run flags (copied without
blocking), moves each finished slot on (next warp, the next finer level through the flow resize, or out), and
refills free slots from the level's queue, so a batch never waits for its slowest pair. The kernels are behind
`ops`: `TorchOps` here (the PyTorch building blocks of src/flow/tvl1.py, any device) or the Triton kernels
(src/flow/triton_tvl1.py); the flows equal those of tvl1.TVL1 pair by pair.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from src.flow.tvl1 import TVL1Params, centered_gradient, median5, pyramid_sizes, remap_cubic, resize_linear, \
    tvl1_step

STATE_FIELDS, MEDIAN_FIELD = 14, 12  # buffer b: u1, u2, p11, p12, p21, p22 at 6b..6b+5; then median u1, u2


@dataclass
class LevelBatch:
    """One pyramid level's slots: device arrays of fixed shape, and the host's bookkeeping of who is where."""

    h: int
    w: int
    eps: float  # OpenCV's stopping threshold epsilon^2 * area, as a float
    img: torch.Tensor  # (4, n, h, w): I0, I1, I1x, I1y
    const: torch.Tensor  # (4, n, h, w): I1wx, I1wy, grad, rho_c of the current warp
    state: torch.Tensor  # (14, n, h, w)
    par: torch.Tensor  # (n,) int32: which buffer holds the slot's state
    it: torch.Tensor  # (n,) int32: iterations done in the current warp
    active: torch.Tensor  # (n,) int32: 1 while the slot iterates
    err: torch.Tensor  # (n,) float64: the last summed squared update (for inspection)
    flags: torch.Tensor  # host copy of `active` (pinned on CUDA)
    owner: list = field(default_factory=list)  # pair index per slot, None when free
    warp: list = field(default_factory=list)
    pyramid: list = field(default_factory=list)  # per slot: the pair's pyramid, kept for the finer levels
    event: object = None
    scratch: dict = field(default_factory=dict)  # whatever the ops keep per batch (the Triton error partials)

    @property
    def n(self) -> int:
        """Number of slots."""
        return len(self.owner)


def new_level(n: int, h: int, w: int, device: torch.device, params: TVL1Params) -> LevelBatch:
    """An empty level batch of n slots of h x w pixels."""
    f32 = dict(dtype=torch.float32, device=device)
    i32 = dict(dtype=torch.int32, device=device)
    pinned = device.type == "cuda"
    return LevelBatch(
        h=h, w=w, eps=float(torch.tensor(params.epsilon * params.epsilon * h * w, dtype=torch.float32)),
        img=torch.zeros(4, n, h, w, **f32), const=torch.zeros(4, n, h, w, **f32),
        state=torch.zeros(STATE_FIELDS, n, h, w, **f32), par=torch.zeros(n, **i32), it=torch.zeros(n, **i32),
        active=torch.zeros(n, **i32), err=torch.zeros(n, dtype=torch.float64, device=device),
        flags=torch.zeros(n, dtype=torch.int32, pin_memory=pinned), owner=[None] * n, warp=[0] * n,
        pyramid=[None] * n, event=torch.cuda.Event() if device.type == "cuda" else None)


def current(lb: LevelBatch) -> torch.Tensor:
    """(6, n, h, w): each slot's state from the buffer holding it."""
    a, b = lb.state[:6], lb.state[6:12]
    return torch.where((lb.par == 0)[None, :, None, None], a, b)


class TorchOps:
    """The kernels' work done by src/flow/tvl1.py's building blocks on the LevelBatch layout (any device)."""

    name = "PyTorch"

    def __init__(self, params: TVL1Params = TVL1Params()) -> None:
        self.p = params

    def resize(self, x: torch.Tensor, size: tuple[int, int], scale: tuple[float, float],
               mul: float | None = None) -> torch.Tensor:
        """Bilinear resize of (M, H, W) as cv::resize, then times mul."""
        out = resize_linear(x, size, scale)
        return out if mul is None else out * mul

    def warp(self, lb: LevelBatch, slots: torch.Tensor) -> None:
        """Warp I1 and its gradient by the slots' u (bicubic), and the inner iterations' constants from it."""
        u = current(lb)[:2, slots]
        gx = torch.arange(lb.w, dtype=torch.float32, device=u.device).expand(lb.h, lb.w)
        gy = torch.arange(lb.h, dtype=torch.float32, device=u.device)[:, None].expand(lb.h, lb.w)
        warped = remap_cubic(lb.img[1:4, slots].transpose(0, 1), gx + u[0], gy + u[1])
        i1w, i1wx, i1wy = warped.unbind(1)
        consts = [i1wx, i1wy, i1wx * i1wx + i1wy * i1wy, i1w - i1wx * u[0] - i1wy * u[1] - lb.img[0, slots]]
        lb.const[:, slots] = torch.stack(consts)

    def median(self, lb: LevelBatch) -> None:
        """5x5 median of u into the median fields, for running slots about to start an outer iteration."""
        due = ((lb.active != 0) & (lb.it % self.p.inner == 0))[:, None, None]
        cur = current(lb)
        for f in range(2):
            lb.state[MEDIAN_FIELD + f] = torch.where(due, median5(cur[f]), lb.state[MEDIAN_FIELD + f])

    def step(self, lb: LevelBatch) -> None:
        """One inner iteration of every running slot, then its stopping test (tvl1_step's arithmetic)."""
        p = self.p
        run = lb.active != 0
        cur = current(lb)
        first = (lb.it % p.inner == 0)[:, None, None]
        u1 = torch.where(first, lb.state[MEDIAN_FIELD], cur[0])
        u2 = torch.where(first, lb.state[MEDIAN_FIELD + 1], cur[1])
        *new, err = tvl1_step(u1, u2, *cur[2:], *lb.const, float(p.lambda_ * p.theta), float(p.theta),
                              float(p.tau / p.theta))
        new = torch.stack(new)
        for b in range(2):  # the new state goes to the buffer not holding the old one
            write = (run & (lb.par == 1 - b))[None, :, None, None]
            lb.state[6 * b:6 * b + 6] = torch.where(write, new, lb.state[6 * b:6 * b + 6])
        ran = run.to(torch.int32)
        lb.it += ran
        lb.par ^= ran
        lb.err.copy_(torch.where(run, err, lb.err))
        lb.active.copy_((run & (err > lb.eps) & (lb.it < p.outer * p.inner)).to(torch.int32))


class Schedule:
    """TV-L1 of a stream of equal-size frame pairs through per-level batches of `capacity` slots on `ops`."""

    def __init__(self, ops, h: int, w: int, device: torch.device, capacity: int = 32, chunk: int = 10,
                 params: TVL1Params = TVL1Params(), run_chunk=None) -> None:
        if params.inner % chunk:
            raise ValueError(f"the chunk ({chunk} iterations) must divide the {params.inner} inner iterations")
        if h < 3 or w < 3:
            raise ValueError(f"TV-L1 needs frames of at least 3x3 pixels, got {h}x{w}")
        self.ops, self.p, self.device, self.chunk = ops, params, device, chunk
        self.sizes = pyramid_sizes(h, w, params.nscales, params.scale_step)
        self.levels = [new_level(capacity, sh, sw, device, params) for sh, sw in self.sizes]
        self.queues: list[deque] = [deque() for _ in self.sizes]
        self.capacity = capacity
        self.run_chunk = run_chunk or self.chunk_once
        self.chunks = 0  # rounds of chunks run, for inspection
        self.refills = 0  # pairs admitted to replace a finished one while others were mid-way

    def chunk_once(self, lb: LevelBatch) -> None:
        """`chunk` iterations of every slot of a level (the median before the first), no host synchronisation."""
        self.ops.median(lb)
        for _ in range(self.chunk):
            self.ops.step(lb)

    def _admit(self, index: int, prev, nxt) -> None:
        """A new pair: its pyramid, queued at the coarsest level with zero flow."""
        frames = torch.stack([torch.as_tensor(prev), torch.as_tensor(nxt)]).to(self.device).to(torch.float32)
        pyr = [frames]
        s = 1 / self.p.scale_step
        for size in self.sizes[1:]:
            pyr.append(self.ops.resize(pyr[-1], size, (s, s)))
        h, w = self.sizes[-1]
        self.queues[-1].append((index, pyr, torch.zeros(2, h, w, dtype=torch.float32, device=self.device)))

    def _fill(self, level: int) -> None:
        """Free slots of a level take queued pairs: images, gradient, initial flow, zero duals, first warp."""
        lb, queue = self.levels[level], self.queues[level]
        free = [i for i, o in enumerate(lb.owner) if o is None][: len(queue)]
        if not free:
            return
        items = [queue.popleft() for _ in free]
        slots = torch.tensor(free, device=self.device)
        i0 = torch.stack([pyr[level][0] for _, pyr, _ in items])
        i1 = torch.stack([pyr[level][1] for _, pyr, _ in items])
        i1x, i1y = centered_gradient(i1)
        lb.img[:, slots] = torch.stack([i0, i1, i1x, i1y])
        state = torch.zeros(6, len(free), lb.h, lb.w, dtype=torch.float32, device=self.device)
        state[:2] = torch.stack([u for _, _, u in items], dim=1)
        lb.state[:6, slots] = state
        lb.par[slots] = 0
        for slot, (index, pyr, _) in zip(free, items):
            lb.owner[slot], lb.warp[slot], lb.pyramid[slot] = index, 0, pyr
        self._start_warp(lb, slots)

    def _start_warp(self, lb: LevelBatch, slots: torch.Tensor) -> None:
        self.ops.warp(lb, slots)
        lb.it[slots] = 0
        lb.active[slots] = 1

    def _finish(self, level: int, done: list[int]) -> list[tuple[int, torch.Tensor]]:
        """Slots whose last warp ended: their flow goes to the next finer level's queue, or out at level 0."""
        lb = self.levels[level]
        slots = torch.tensor(done, device=self.device)
        u = current(lb)[:2, slots]  # (2, k, h, w)
        out = []
        if level == 0:
            flows = torch.stack([u[0], u[1]], dim=-1)
            out = [(lb.owner[s], flows[i]) for i, s in enumerate(done)]
        else:
            (sh, sw), (dh, dw) = self.sizes[level], self.sizes[level - 1]
            up = self.ops.resize(u.reshape(-1, sh, sw), (dh, dw), (1 / (dh / sh), 1 / (dw / sw)),
                                 1 / self.p.scale_step).reshape(2, len(done), dh, dw)
            for i, s in enumerate(done):
                self.queues[level - 1].append((lb.owner[s], lb.pyramid[s], up[:, i]))
        for s in done:
            lb.owner[s], lb.pyramid[s] = None, None
        return out

    def run(self, pairs: Iterable) -> Iterator[tuple[int, torch.Tensor]]:
        """Flows (H, W, 2) on the device of (prev, next) uint8 (H, W) frames, as (index, flow), in finishing order."""
        source = enumerate(pairs)
        in_flight, exhausted = 0, False
        while True:
            while in_flight < self.capacity and not exhausted:
                nxt = next(source, None)
                if nxt is None:
                    exhausted = True
                    break
                self._admit(nxt[0], *nxt[1])
                self.refills += bool(self.chunks and in_flight)
                in_flight += 1
            for level in range(len(self.levels) - 1, -1, -1):
                self._fill(level)
            busy = [lb for lb in self.levels if any(o is not None for o in lb.owner)]
            if not busy:
                return
            for lb in busy:
                self.run_chunk(lb)
                lb.flags.copy_(lb.active, non_blocking=True)
                if lb.event is not None:
                    lb.event.record()
            self.chunks += 1
            for level, lb in enumerate(self.levels):
                if lb not in busy:
                    continue
                if lb.event is not None:
                    lb.event.synchronize()  # this level's flags; the later levels' chunks keep the device busy
                flags = lb.flags.tolist()
                stopped = [s for s, o in enumerate(lb.owner) if o is not None and not flags[s]]
                again, done = [], []
                for s in stopped:
                    lb.warp[s] += 1
                    (again if lb.warp[s] < self.p.warps else done).append(s)
                if again:
                    self._start_warp(lb, torch.tensor(again, device=self.device))
                if done:
                    for item in self._finish(level, done):
                        in_flight -= 1
                        yield item


def schedule_flows(schedule: Schedule, prev: np.ndarray | torch.Tensor, nxt: np.ndarray | torch.Tensor
                   ) -> torch.Tensor:
    """Flow (N, H, W, 2) of N pairs of (N, H, W) frames through a schedule, in input order, on its device."""
    n, h, w = prev.shape
    out = torch.empty(n, h, w, 2, dtype=torch.float32, device=schedule.device)
    for i, flow in schedule.run(zip(prev, nxt)):
        out[i] = flow
    return out
