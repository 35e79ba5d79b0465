"""TV-L1 optical flow in PyTorch, batched over frame pairs, following OpenCV's DualTVL1OpticalFlow step for step.

What is reproduced from OpenCV's CPU implementation (optflow module, default parameters): frames as float
0..255; a pyramid of `nscales` levels made by bilinear cv::resize with factor `scale_step` (sizes rounded,
stopping above 16 px); zero flow at the coarsest level; at each level the dual variables start at zero,
`warps` warps of I1 and its centred gradient by bicubic remap (at the exact coordinates as OpenCV 5 does, zero
outside the image); per warp up to `outer` x `inner` iterations, a 5x5 median of the flow before each outer one,
stopping when the summed squared flow update of the pair is <= epsilon^2 * area; between levels a bilinear
resize of the flow multiplied by 1 / scale_step. Each pair of a batch stops on its own: a converged pair is
frozen (masked) and, at the next host check, leaves the batch, so N pairs give the flow of N single calls.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F

FLT_EPSILON = 1.1920928955078125e-07


@dataclass(frozen=True)
class TVL1Params:
    """OpenCV's DualTVL1OpticalFlow defaults (gamma 0, no initial flow)."""

    tau: float = 0.25
    lambda_: float = 0.15
    theta: float = 0.3
    nscales: int = 5
    warps: int = 5
    epsilon: float = 0.01
    inner: int = 30
    outer: int = 10
    scale_step: float = 0.8
    median: int = 5


def pyramid_sizes(h: int, w: int, nscales: int = 5, scale_step: float = 0.8) -> list[tuple[int, int]]:
    """(H, W) of each level as cv::resize(Size(), fx, fy) makes them; a level under 16 px ends the pyramid."""
    sizes = [(h, w)]
    for _ in range(1, nscales):
        ph, pw = sizes[-1]
        nh, nw = round(ph * scale_step), round(pw * scale_step)  # saturate_cast<int>: round half to even
        if nh < 16 or nw < 16:
            break
        sizes.append((nh, nw))
    return sizes


def fma(a: torch.Tensor, b: torch.Tensor | float, c: torch.Tensor | float) -> torch.Tensor:
    """a * b + c in float32 with one rounding (a fused multiply-add), as OpenCV's vectorised kernels compute it.

    A product of two floats is exact in float64, so the float64 sum rounds to the fused value (a double rounding
    could differ in about 2^-29 of cases). MPS has no float64: there it is the unfused float32 a * b + c.
    """
    if a.device.type == "mps":
        return a * b + c
    return (a.to(torch.float64) * b + c).to(torch.float32)


@lru_cache(maxsize=64)
def linear_taps(src: int, dst: int, scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """cv::resize INTER_LINEAR taps along one axis: indices i0, i1 and the float weight of i1 (dst,).

    Before the first pixel the weight is 0 on pixels 0 and 1. Past the last one, where OpenCV 5 (IPP) reads the
    last pixel when enlarging but p0 + 1 * (p1 - p0) from the last two when shrinking (which can differ from p1
    in the last bit), so does this.
    """
    pos = (torch.arange(dst, dtype=torch.float64) + 0.5) * scale - 0.5
    i0 = torch.floor(pos)
    frac = (pos - i0).to(torch.float32)  # the fraction is taken in double, then stored as float
    carry = frac == 1  # a position a hair below an integer (108.99999999999999) reads that pixel, as in OpenCV
    i0 = i0.to(torch.int64) + carry
    frac = torch.where(carry, torch.zeros_like(frac), frac)
    if src == 1:
        return torch.zeros_like(i0), torch.zeros_like(i0), torch.zeros_like(frac)
    low, high = i0 < 0, i0 >= src - 1
    shrink = scale > 1
    frac = torch.where(low, torch.zeros_like(frac), torch.where(high, torch.full_like(frac, float(shrink)), frac))
    i0 = torch.where(low, torch.zeros_like(i0), torch.where(high, torch.full_like(i0, src - 1 - shrink), i0))
    return i0, (i0 + 1).clamp(max=src - 1), frac


def resize_linear(x: torch.Tensor, size: tuple[int, int], scale: tuple[float, float]) -> torch.Tensor:
    """Bilinear resize of (..., H, W) like cv::resize; scale = (src/dst along y, along x) as OpenCV uses it.

    Bit for bit what OpenCV 5 (its IPP path, on by default) gives for float32 images of TV-L1's sizes: a
    horizontal pass then a vertical one, each p0 + f * (p1 - p0) as one fused multiply-add in float32.
    """
    h, w = x.shape[-2:]
    x0, x1, fx = (t.to(x.device) for t in linear_taps(w, size[1], scale[1]))
    y0, y1, fy = (t.to(x.device) for t in linear_taps(h, size[0], scale[0]))
    left = x.index_select(-1, x0)
    rows = fma(x.index_select(-1, x1) - left, fx, left)
    top = rows.index_select(-2, y0)
    return fma(rows.index_select(-2, y1) - top, fy[:, None], top)


def _cubic_weights(x: torch.Tensor) -> list[torch.Tensor]:
    """The four bicubic weights (A = -0.75) at fractional offsets x in [0, 1), float32, rounded as OpenCV 5 does.

    OpenCV 5 evaluates the outer weights as products A x (x-1)^2 and A x^2 (1-x), the inner one at distance x
    as a fused polynomial, and the one at distance 1 - x as what makes the four sum to one.
    """
    a = -0.75
    xx = x * x
    xm = x - 1
    w0 = a * (x * (xm * xm))
    w1 = fma(fma(x, a + 2, -(a + 3)), xx, 1.0)
    w3 = a * (xx * (1 - x))
    w2 = ((1 - w0) - w1) - w3
    return [w0, w1, w2, w3]


def remap_cubic(img: torch.Tensor, mx: torch.Tensor, my: torch.Tensor, tab: int | None = None) -> torch.Tensor:
    """cv::remap INTER_CUBIC, BORDER_CONSTANT 0 of (N, C, H, W) at float maps (N, H, W): (N, C, H, W).

    OpenCV 5 interpolates at the exact map coordinates (tab None) and matches this bit for bit: per row of four
    taps t0*w0 then three fused multiply-adds, the four rows combined the same way with the vertical weights;
    taps outside the image read 0. OpenCV 4 rounded the coordinates to 1/32 px (tab 32; its weights were
    rounded differently, so that mode is only close to it).
    """
    n, c, h, w = img.shape
    if tab:
        mx, my = torch.round(mx * tab) / tab, torch.round(my * tab) / tab
    fx, fy = torch.floor(mx), torch.floor(my)
    wx = _cubic_weights(mx - fx)
    wy = _cubic_weights(my - fy)
    ix, iy = fx.to(torch.int64), fy.to(torch.int64)
    flat = img.reshape(n, c, h * w)
    zero = torch.zeros((), dtype=img.dtype, device=img.device)
    out = None
    for j in range(4):
        yy = iy + (j - 1)
        vy = (yy >= 0) & (yy < h)
        row = None
        for i in range(4):
            xx = ix + (i - 1)
            valid = (vy & (xx >= 0) & (xx < w))[:, None]
            lin = (yy.clamp(0, h - 1) * w + xx.clamp(0, w - 1)).reshape(n, 1, h * w).expand(n, c, h * w)
            tap = torch.where(valid, torch.gather(flat, 2, lin).reshape(n, c, h, w), zero)
            row = tap * wx[i][:, None] if row is None else fma(tap, wx[i][:, None], row)
        out = row * wy[j][:, None] if out is None else fma(row, wy[j][:, None], out)
    return out


def centered_gradient(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """OpenCV's centeredGradient of (N, H, W): half the central difference, one-sided halves at the borders."""
    p = F.pad(x[:, None], (1, 1, 1, 1), mode="replicate")[:, 0]
    return 0.5 * (p[:, 1:-1, 2:] - p[:, 1:-1, :-2]), 0.5 * (p[:, 2:, 1:-1] - p[:, :-2, 1:-1])


# -- 5x5 median as a pruned compare-exchange network (exactly cv::medianBlur's value, replicate border) --------

def _batcher_pairs(n: int) -> list[tuple[int, int]]:
    """Comparators of Batcher's odd-even merge sort on n (a power of two) wires."""
    pairs = []
    p = 1
    while p < n:
        k = p
        while k >= 1:
            for j in range(k % p, n - k, 2 * k):
                for i in range(min(k, n - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p):
                        pairs.append((i + j, i + j + k))
            k //= 2
        p *= 2
    return pairs


@lru_cache(maxsize=4)
def median_network(n: int = 25) -> tuple[tuple[str, int, int], ...]:
    """SSA program (op, a, b) computing the median of n inputs (ids 0..n-1); the last node is the median."""
    size = 1 << (n - 1).bit_length()
    inf = -1
    wires = list(range(n)) + [inf] * (size - n)
    nodes: list[tuple[str, int, int]] = []
    for a, b in _batcher_pairs(size):
        x, y = wires[a], wires[b]
        if y == inf:
            continue
        if x == inf:
            wires[a], wires[b] = y, inf
            continue
        nodes.append(("min", x, y))
        nodes.append(("max", x, y))
        wires[a], wires[b] = n + len(nodes) - 2, n + len(nodes) - 1
    need = {wires[n // 2]}
    for k in range(len(nodes) - 1, -1, -1):
        if n + k in need:
            need.update(nodes[k][1:])
    keep = [k for k in range(len(nodes)) if n + k in need]
    remap = {i: i for i in range(n)}
    prog = []
    for k in keep:
        op, a, b = nodes[k]
        remap[n + k] = n + len(prog)
        prog.append((op, remap[a], remap[b]))
    return tuple(prog)


MEDIAN25 = median_network(25)


def median5(x: torch.Tensor) -> torch.Tensor:
    """5x5 median of (N, H, W) with replicated borders, as cv::medianBlur(ksize=5) on float32."""
    h, w = x.shape[-2:]
    p = F.pad(x[:, None], (2, 2, 2, 2), mode="replicate")[:, 0]
    vals = [p[:, dy:dy + h, dx:dx + w] for dy in range(5) for dx in range(5)]
    for op, a, b in MEDIAN25:
        vals.append(torch.minimum(vals[a], vals[b]) if op == "min" else torch.maximum(vals[a], vals[b]))
    return vals[-1].contiguous()


# -- the inner iteration ---------------------------------------------------------------------------------------

def divergence(px: torch.Tensor, py: torch.Tensor) -> torch.Tensor:
    """OpenCV's divergence of (px, py) on (N, H, W): backward differences, the field taken as 0 outside.

    Summed in OpenCV's order: (dx px) + (dy py), but (px + py) - py[y-1] in the first column.
    """
    up = F.pad(py, (0, 0, 1, 0))[..., :-1, :]
    inner = (px[..., 1:] - px[..., :-1]) + (py[..., 1:] - up[..., 1:])
    first = (px[..., :1] + py[..., :1]) - up[..., :1]
    return torch.cat([first, inner], dim=-1)


def tvl1_step(u1: torch.Tensor, u2: torch.Tensor, p11: torch.Tensor, p12: torch.Tensor, p21: torch.Tensor,
              p22: torch.Tensor, i1wx: torch.Tensor, i1wy: torch.Tensor, grad: torch.Tensor, rho_c: torch.Tensor,
              l_t: float, theta: float, taut: float):
    """One inner iteration (estimateV, divergence, estimateU, forwardGradient, dual update) on (N, H, W).

    Returns the new u1, u2, p11, p12, p21, p22 and each pair's summed squared update of u (N,).
    """
    rho = rho_c + (i1wx * u1 + i1wy * u2)
    # The thresholding step, OpenCV's three cases with its own comparisons (a clamp of -rho/grad is the same
    # function but rounds differently at the case boundaries, and ~1500 iterations amplify such ulps).
    lg = l_t * grad
    fi = torch.where(rho < -lg, l_t, torch.where(rho > lg, -l_t, torch.where(
        grad > FLT_EPSILON, -rho / torch.where(grad > FLT_EPSILON, grad, 1.0), 0.0)))
    v1 = u1 + fi * i1wx
    v2 = u2 + fi * i1wy
    div1, div2 = divergence(p11, p12), divergence(p21, p22)
    nu1 = v1 + theta * div1
    nu2 = v2 + theta * div2
    d1, d2 = nu1 - u1, nu2 - u2
    # OpenCV sums the pair's squared updates sequentially in float; a float64 sum reaches the same stopping
    # decisions (a float32 tree sum does not always); MPS has no float64.
    acc = torch.float32 if u1.device.type == "mps" else torch.float64
    err = (d1 * d1 + d2 * d2).sum(dim=(-2, -1), dtype=acc)
    u1x = F.pad(nu1[..., 1:] - nu1[..., :-1], (0, 1))
    u1y = F.pad(nu1[..., 1:, :] - nu1[..., :-1, :], (0, 0, 0, 1))
    u2x = F.pad(nu2[..., 1:] - nu2[..., :-1], (0, 1))
    u2y = F.pad(nu2[..., 1:, :] - nu2[..., :-1, :], (0, 0, 0, 1))
    ng1 = 1.0 + taut * torch.hypot(u1x, u1y)
    ng2 = 1.0 + taut * torch.hypot(u2x, u2y)
    return (nu1, nu2, (p11 + taut * u1x) / ng1, (p12 + taut * u1y) / ng1,
            (p21 + taut * u2x) / ng2, (p22 + taut * u2y) / ng2, err)


def tvl1_step_masked(u1, u2, p11, p12, p21, p22, i1wx, i1wy, grad, rho_c, active, l_t: float, theta: float,
                     taut: float):
    """tvl1_step that leaves pairs with active == False unchanged (their error reads 0)."""
    out = tvl1_step(u1, u2, p11, p12, p21, p22, i1wx, i1wy, grad, rho_c, l_t, theta, taut)
    m = active[:, None, None]
    new = tuple(torch.where(m, o, s) for o, s in zip(out[:6], (u1, u2, p11, p12, p21, p22)))
    return (*new, torch.where(active, out[6], torch.zeros_like(out[6])))


_COMPILED: dict[str, object] = {}


def compiled_steps() -> tuple[object, object, object]:
    """torch.compile'd (step, masked step, median), built once per process (dynamic shapes: every level, batch)."""
    if "step" not in _COMPILED:
        _COMPILED["step"] = torch.compile(tvl1_step, dynamic=True)
        _COMPILED["masked"] = torch.compile(tvl1_step_masked, dynamic=True)
        _COMPILED["median"] = torch.compile(median5, dynamic=True)
    return _COMPILED["step"], _COMPILED["masked"], _COMPILED["median"]


class TVL1:
    """Batched TV-L1: call with uint8/float (N, H, W) tensors prev, nxt -> float32 flow (N, H, W, 2) in px."""

    def __init__(self, params: TVL1Params = TVL1Params(), compile: bool = False, check_every: int | None = None,
                 cpu_threads: int | None = 1) -> None:
        if params.median not in (0, 1, 5):
            raise ValueError(f"only OpenCV's default 5x5 median (or none) is implemented, got {params.median}")
        self.p = params
        self.compile = compile
        self.check_every = check_every  # host checks of convergence: every iteration on CPU, every 10 elsewhere
        # On a CPU every op of an iteration (eager) or every loop of the compiled kernel is an OpenMP parallel
        # region ending in a barrier, and one pair's ops are small (~0.1 ms): on a busy machine a barrier waits
        # for a descheduled thread, which measured 30x (eager) and 5-10x (compiled) slower on 2 threads than on 1.
        # So the port runs one thread per process (None: leave torch's setting); parallelism is across processes.
        self.cpu_threads = cpu_threads

    def __call__(self, prev: torch.Tensor, nxt: torch.Tensor) -> torch.Tensor:
        """Flow (N, H, W, 2) float32, flow[..., 0] = dx, flow[..., 1] = dy, on prev's device."""
        threads = torch.get_num_threads()
        if prev.device.type != "cpu" or not self.cpu_threads or self.cpu_threads == threads:
            return self._call(prev, nxt)
        torch.set_num_threads(self.cpu_threads)
        try:
            return self._call(prev, nxt)
        finally:
            torch.set_num_threads(threads)

    def _call(self, prev: torch.Tensor, nxt: torch.Tensor) -> torch.Tensor:
        if not self.compile:
            return self._flow(prev, nxt)
        try:
            return self._flow(prev, nxt)
        except (ValueError, TypeError):
            raise
        except Exception as exc:  # e.g. no C++ compiler for inductor: the eager path gives the same flow
            warnings.warn(f"torch.compile of TV-L1 failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
                          "running it eagerly")
            self.compile = False
            return self._flow(prev, nxt)

    def _flow(self, prev: torch.Tensor, nxt: torch.Tensor) -> torch.Tensor:
        if prev.shape != nxt.shape or prev.ndim != 3:
            raise ValueError(f"TV-L1 needs two (N, H, W) stacks of one shape, got {tuple(prev.shape)} and {tuple(nxt.shape)}")
        n, h, w = prev.shape
        if h < 3 or w < 3:
            raise ValueError(f"TV-L1 needs frames of at least 3x3 pixels, got {h}x{w}")
        p = self.p
        check = self.check_every or (1 if prev.device.type == "cpu" else 10)
        with torch.no_grad():
            both = torch.cat([prev, nxt]).to(torch.float32)
            sizes = pyramid_sizes(h, w, p.nscales, p.scale_step)
            levels = [both]
            for s in range(1, len(sizes)):
                levels.append(resize_linear(levels[-1], sizes[s], (1 / p.scale_step, 1 / p.scale_step)))
            uh, uw = sizes[-1]
            u = torch.zeros(2 * n, uh, uw, dtype=torch.float32, device=prev.device)
            for s in range(len(sizes) - 1, -1, -1):
                u1, u2 = self._one_scale(levels[s][:n], levels[s][n:], u[:n], u[n:], check)
                u = torch.cat([u1, u2])
                if s == 0:
                    break
                (sh, sw), (dh, dw) = sizes[s], sizes[s - 1]
                u = resize_linear(u, (dh, dw), (1 / (dh / sh), 1 / (dw / sw))) * (1 / p.scale_step)
            return torch.stack([u[:n], u[n:]], dim=-1)

    def _one_scale(self, i0: torch.Tensor, i1: torch.Tensor, u1: torch.Tensor, u2: torch.Tensor, check: int
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.p
        n, h, w = i0.shape
        dev = i0.device
        eps = float(torch.tensor(p.epsilon * p.epsilon * h * w, dtype=torch.float32))
        l_t, taut, theta = float(p.lambda_ * p.theta), float(p.tau / p.theta), float(p.theta)
        step, masked, median = compiled_steps() if self.compile else (tvl1_step, tvl1_step_masked, median5)
        i1x, i1y = centered_gradient(i1)
        stack = torch.stack([i1, i1x, i1y], dim=1)
        gx = torch.arange(w, dtype=torch.float32, device=dev).expand(h, w)
        gy = torch.arange(h, dtype=torch.float32, device=dev)[:, None].expand(h, w)
        u1, u2 = u1.clone(), u2.clone()
        dual = [torch.zeros_like(u1) for _ in range(4)]
        for _ in range(p.warps):
            warped = remap_cubic(stack, gx + u1, gy + u2)
            i1w, i1wx, i1wy = warped.unbind(1)
            grad = i1wx * i1wx + i1wy * i1wy
            rho_c = i1w - i1wx * u1 - i1wy * u2 - i0
            full = [u1, u2, *dual]
            idx = torch.arange(n, device=dev)
            state = list(full)
            consts = [i1wx, i1wy, grad, rho_c]
            active = torch.ones(n, dtype=torch.bool, device=dev)
            unchecked = 0  # steps since the host last saw `active` (then all pairs in the batch were active)
            for k in range(p.outer * p.inner):
                if k % p.inner == 0 and p.median > 1:
                    m1, m2 = median(state[0]), median(state[1])
                    if unchecked:
                        m = active[:, None, None]
                        m1, m2 = torch.where(m, m1, state[0]), torch.where(m, m2, state[1])
                    state[0], state[1] = m1, m2
                if unchecked:
                    *state, err = masked(*state, *consts, active, l_t, theta, taut)
                else:
                    *state, err = step(*state, *consts, l_t, theta, taut)
                active = active & (err > eps)
                unchecked += 1
                if unchecked >= check or k == p.outer * p.inner - 1:
                    unchecked = 0
                    keep = active.nonzero().squeeze(1)  # the host round trip, once per `check` iterations
                    if len(keep) == len(idx):
                        continue
                    for f, s_ in zip(full, state):
                        f.index_copy_(0, idx, s_)
                    if len(keep) == 0:
                        break
                    idx = idx[keep]
                    state = [s_[keep] for s_ in state]
                    consts = [c[keep] for c in consts]
                    active = active[keep]
            else:
                for f, s_ in zip(full, state):
                    f.index_copy_(0, idx, s_)
            u1, u2, dual = full[0], full[1], full[2:]
        return u1, u2
