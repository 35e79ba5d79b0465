"""TV-L1 on CUDA with the Triton kernels of src/flow/triton_kernels.py under the refilling schedule of
src/flow/schedule.py, each level's chunk of iterations replayed as one CUDA graph.

The flow is OpenCV's bit for bit (the kernels compute what src/flow/tvl1.py computes); TritonTVL1 also runs under
TRITON_INTERPRET=1 on CPU tensors (slowly), which is how it is tested without a GPU.
"""
from __future__ import annotations

import torch
import triton

from src.flow import triton_kernels as K
from src.flow.schedule import LevelBatch, Schedule, schedule_flows
from src.flow.tvl1 import TVL1Params


class TritonOps:
    """The schedule's operations as Triton kernel launches (tile = pixels per program)."""

    name = "Triton"

    def __init__(self, params: TVL1Params = TVL1Params(), tile: tuple[int, int] = K.TILE) -> None:
        self.p, self.tile = params, tile

    def resize(self, x: torch.Tensor, size: tuple[int, int], scale: tuple[float, float],
               mul: float | None = None) -> torch.Tensor:
        """Bilinear resize of (M, H, W) as cv::resize, then times mul."""
        return K.resize(x, size, scale, mul, self.tile)

    def _grid(self, lb: LevelBatch) -> tuple[int, int]:
        return K.tiles(lb.h, lb.w, self.tile)

    def warp(self, lb: LevelBatch, slots: torch.Tensor) -> None:
        """Warp I1 and its gradient by the slots' u (bicubic), and the inner iterations' constants from it."""
        tx, n = self._grid(lb)
        K.warp_kernel[(n, len(slots))](lb.img, lb.state, lb.const, slots.to(torch.int32), lb.par, lb.n, lb.h, lb.w,
                                       tx, HW_FMA=K.hw_fma(), BH=self.tile[0], BW=self.tile[1], **K.launch_options())

    def median(self, lb: LevelBatch) -> None:
        """5x5 median of u into the median fields, for running slots about to start an outer iteration."""
        tx, n = self._grid(lb)
        K.median_kernel[(n, lb.n, 2)](lb.state, lb.par, lb.it, lb.active, lb.n, lb.h, lb.w, tx, INNER=self.p.inner,
                                      BH=self.tile[0], BW=self.tile[1], **K.launch_options())

    def step(self, lb: LevelBatch) -> None:
        """One inner iteration of every running slot (one fused kernel), then its stopping test."""
        p = self.p
        tx, n = self._grid(lb)
        part = lb.scratch.get("part")
        if part is None:
            part = lb.scratch["part"] = torch.zeros(lb.n, n, dtype=torch.float64, device=lb.state.device)
        K.step_kernel[(n, lb.n)](lb.state, lb.const, lb.par, lb.it, lb.active, part, lb.n, lb.h, lb.w, tx,
                                 float(p.lambda_ * p.theta), float(p.theta), float(p.tau / p.theta), INNER=p.inner,
                                 BH=self.tile[0], BW=self.tile[1], **K.launch_options())
        K.finalize_kernel[(lb.n,)](part, lb.par, lb.it, lb.active, lb.err, n, lb.eps, p.outer * p.inner,
                                   BT=triton.next_power_of_2(n), **K.launch_options())


class GraphChunks:
    """Runs a schedule's chunks, each level's captured once as a CUDA graph and replayed after that."""

    def __init__(self) -> None:
        self.schedule: Schedule | None = None
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.seen: set[int] = set()

    def __call__(self, lb: LevelBatch) -> None:
        """One chunk of lb: eager the first time (compiling the kernels), a graph replay afterwards."""
        key = id(lb)
        graph = self.graphs.get(key)
        if graph is None:
            if key not in self.seen:
                self.seen.add(key)
                self.schedule.chunk_once(lb)
                return
            torch.cuda.synchronize(lb.state.device)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self.schedule.chunk_once(lb)
            self.graphs[key] = graph
        graph.replay()


class TritonTVL1:
    """Batched TV-L1 with Triton kernels: call with (N, H, W) frame stacks -> float32 flow (N, H, W, 2) in px.

    capacity: pairs in flight (slots per pyramid level); chunk: iterations between the host's looks at the run
    flags; graphs: replay chunks as CUDA graphs (default: on CUDA).
    """

    def __init__(self, params: TVL1Params = TVL1Params(), capacity: int = 128, chunk: int = 10,
                 graphs: bool | None = None, tile: tuple[int, int] = K.TILE) -> None:
        self.p, self.capacity, self.chunk, self.graphs, self.tile = params, capacity, chunk, graphs, tile
        self._schedules: dict[tuple, Schedule] = {}

    def schedule(self, h: int, w: int, device: torch.device) -> Schedule:
        """The (reused) schedule for h x w frames on a device."""
        key = (h, w, str(device))
        if key not in self._schedules:
            graphs = device.type == "cuda" if self.graphs is None else self.graphs
            runner = GraphChunks() if graphs else None
            sched = Schedule(TritonOps(self.p, self.tile), h, w, device, self.capacity, self.chunk, self.p,
                             run_chunk=runner)
            if runner is not None:
                runner.schedule = sched
            self._schedules = {key: sched}  # one frame size at a time keeps device memory bounded
        return self._schedules[key]

    def __call__(self, prev: torch.Tensor, nxt: torch.Tensor) -> torch.Tensor:
        """Flow (N, H, W, 2) float32, flow[..., 0] = dx, flow[..., 1] = dy, on prev's device."""
        if prev.shape != nxt.shape or prev.ndim != 3:
            raise ValueError(f"TV-L1 needs two (N, H, W) stacks of one shape, got {tuple(prev.shape)} and {tuple(nxt.shape)}")
        with torch.no_grad():
            return schedule_flows(self.schedule(prev.shape[1], prev.shape[2], prev.device), prev, nxt)
