"""TV-L1's GPU kernels in Triton, computing what src/flow/tvl1.py computes bit for bit (and so OpenCV's flow).

Exact IEEE float32 where OpenCV rounds: division by div_rn (Triton's `/` is the approximate div.full.f32),
OpenCV's hypot as the float64 sqrt_rn of the float64 sum of squares rounded to float (the float64 squares are
exact), fused multiply-adds only where OpenCV fuses them (remap and resize), and every launch compiled with
enable_fp_fusion=False so that nothing else is contracted. Under TRITON_INTERPRET=1 (numpy) tl.fma is not fused,
so there `fma` emulates the fused result exactly in float64 (round to odd, then to float), and the float32
results equal the hardware's.

Layout of one level's batch of N slots (every array (.., N, H, W) float32, contiguous):
  img   (4, N, H, W): I0, I1, I1x, I1y           const (4, N, H, W): I1wx, I1wy, grad, rho_c
  state (14, N, H, W): buffer b holds u1, u2, p11, p12, p21, p22 at 6b..6b+5; 12, 13: the median of u
  par, it, active (N,) int32: the buffer holding the slot's state, its iterations in this warp, still running
"""
from __future__ import annotations

import linecache

import torch
import triton
import triton.language as tl

from src.flow.tvl1 import MEDIAN25

TILE = (8, 32)  # pixels per program on a GPU: 2 per thread at 4 warps (~100 registers: more warps in flight)
NUM_WARPS = 4
STATE_FIELDS = 14
MEDIAN_FIELD = 12
MEDIAN_FIELD_C = tl.constexpr(MEDIAN_FIELD)  # a global a kernel reads must be a tl.constexpr when compiled


def interpreting() -> bool:
    """Whether these kernels run in Triton's numpy interpreter (TRITON_INTERPRET=1 when this module was imported)."""
    return not isinstance(step_kernel, triton.runtime.jit.JITFunction)


@triton.jit
def _fma_emulated(a, b, c):
    """a * b + c rounded once to float32, in float64: the product is exact, the sum is rounded to odd."""
    p = a.to(tl.float64) * b.to(tl.float64)
    cd = c.to(tl.float64)
    s = p + cd
    bb = s - p
    err = (p - (s - bb)) + (cd - bb)  # TwoSum: s + err == p + c exactly
    bits = s.to(tl.int64, bitcast=True)
    odd_up = tl.where((err > 0) == (s > 0), 1, -1).to(tl.int64)
    bits = tl.where((err != 0) & ((bits & 1) == 0), bits + odd_up, bits)
    return bits.to(tl.float64, bitcast=True).to(tl.float32)


@triton.jit
def fma_ieee(a, b, c, HW_FMA: tl.constexpr):
    """OpenCV's fused a * b + c: fma.rn.f32 when compiled, its exact emulation under the interpreter."""
    if HW_FMA:
        r = tl.fma(a, b, c)
    else:
        r = _fma_emulated(a, b, c)
    return r


@triton.jit
def hypot(x, y):
    """OpenCV's (float)hypot((double)x, (double)y): the float64 squares are exact, one rounding each after."""
    xd = x.to(tl.float64)
    yd = y.to(tl.float64)
    return tl.sqrt(xd * xd + yd * yd).to(tl.float32)  # float64 sqrt is always sqrt.rn.f64


# -- the inner iteration -----------------------------------------------------------------------------------------

@triton.jit
def _nu(ubase, sbase, cbase, y, x, m, H, W, NHW, l_t, theta):
    """Thresholding, divergence and the update of u at pixels (y, x) where m: u's new value and its inputs."""
    o = y * W + x
    u1 = tl.load(ubase + o, mask=m, other=0.0)
    u2 = tl.load(ubase + NHW + o, mask=m, other=0.0)
    wx = tl.load(cbase + o, mask=m, other=0.0)
    wy = tl.load(cbase + NHW + o, mask=m, other=0.0)
    g = tl.load(cbase + 2 * NHW + o, mask=m, other=0.0)
    rc = tl.load(cbase + 3 * NHW + o, mask=m, other=0.0)
    rho = rc + (wx * u1 + wy * u2)
    lg = l_t * g
    big = g > 1.1920928955078125e-07
    fi = tl.where(rho < -lg, l_t, tl.where(rho > lg, -l_t, tl.where(big, tl.div_rn(-rho, tl.where(big, g, 1.0)), 0.0)))
    v1 = u1 + fi * wx
    v2 = u2 + fi * wy
    first = x == 0
    ml = m & (x > 0)
    mu = m & (y > 0)
    p11 = tl.load(sbase + 2 * NHW + o, mask=m, other=0.0)
    p12 = tl.load(sbase + 3 * NHW + o, mask=m, other=0.0)
    p21 = tl.load(sbase + 4 * NHW + o, mask=m, other=0.0)
    p22 = tl.load(sbase + 5 * NHW + o, mask=m, other=0.0)
    p11l = tl.load(sbase + 2 * NHW + o - 1, mask=ml, other=0.0)
    p12u = tl.load(sbase + 3 * NHW + o - W, mask=mu, other=0.0)
    p21l = tl.load(sbase + 4 * NHW + o - 1, mask=ml, other=0.0)
    p22u = tl.load(sbase + 5 * NHW + o - W, mask=mu, other=0.0)
    # OpenCV's order: (dx px) + (dy py), but (px + py) - py[y-1] in the first column
    div1 = tl.where(first, (p11 + p12) - p12u, (p11 - p11l) + (p12 - p12u))
    div2 = tl.where(first, (p21 + p22) - p22u, (p21 - p21l) + (p22 - p22u))
    return v1 + theta * div1, v2 + theta * div2, u1, u2, p11, p12, p21, p22


@triton.jit
def step_kernel(state, const, par, it, active, part, N, H, W, TILES_X, l_t, theta, taut,
                INNER: tl.constexpr, BH: tl.constexpr, BW: tl.constexpr):
    """One inner iteration of every running slot, one tile per program: reads buffer par, writes the other.

    The right and lower neighbours' new u are recomputed here (no second launch); the tile's summed squared
    update of u goes to part[slot, tile] in float64, summed in a fixed order by finalize_kernel.
    """
    tile = tl.program_id(0)
    slot = tl.program_id(1)
    if tl.load(active + slot) == 0:
        return
    pb = tl.load(par + slot)
    k = tl.load(it + slot)
    HW = H * W
    NHW = (N * HW).to(tl.int64)
    own = slot.to(tl.int64) * HW
    sbase = state + pb * 6 * NHW + own
    dbase = state + (1 - pb) * 6 * NHW + own
    ufield = tl.where(k % INNER == 0, MEDIAN_FIELD_C, pb * 6)  # the first step of an outer iteration: median u
    ubase = state + ufield * NHW + own
    cbase = const + own
    y = (tile // TILES_X) * BH + tl.arange(0, BH)[:, None]
    x = (tile % TILES_X) * BW + tl.arange(0, BW)[None, :]
    m = (y < H) & (x < W)
    right = x + 1 < W
    down = y + 1 < H
    nu1, nu2, u1, u2, p11, p12, p21, p22 = _nu(ubase, sbase, cbase, y, x, m, H, W, NHW, l_t, theta)
    r1, r2, _a, _b, _c, _d, _e, _f = _nu(ubase, sbase, cbase, y, x + 1, m & right, H, W, NHW, l_t, theta)
    d1, d2, _g, _h, _i, _j, _k, _l = _nu(ubase, sbase, cbase, y + 1, x, m & down, H, W, NHW, l_t, theta)
    u1x = tl.where(right, r1 - nu1, 0.0)
    u1y = tl.where(down, d1 - nu1, 0.0)
    u2x = tl.where(right, r2 - nu2, 0.0)
    u2y = tl.where(down, d2 - nu2, 0.0)
    ng1 = 1.0 + taut * hypot(u1x, u1y)
    ng2 = 1.0 + taut * hypot(u2x, u2y)
    o = y * W + x
    tl.store(dbase + o, nu1, mask=m)
    tl.store(dbase + NHW + o, nu2, mask=m)
    tl.store(dbase + 2 * NHW + o, tl.div_rn(p11 + taut * u1x, ng1), mask=m)
    tl.store(dbase + 3 * NHW + o, tl.div_rn(p12 + taut * u1y, ng1), mask=m)
    tl.store(dbase + 4 * NHW + o, tl.div_rn(p21 + taut * u2x, ng2), mask=m)
    tl.store(dbase + 5 * NHW + o, tl.div_rn(p22 + taut * u2y, ng2), mask=m)
    e1 = nu1 - u1
    e2 = nu2 - u2
    e = tl.where(m, (e1 * e1 + e2 * e2).to(tl.float64), 0.0)
    tl.store(part + slot * tl.num_programs(0) + tile, tl.sum(tl.sum(e, axis=1), axis=0))


@triton.jit
def finalize_kernel(part, par, it, active, err, TILES, eps, max_iter, BT: tl.constexpr):
    """After a step: each running slot's error summed over its tiles; flips its buffer; stops it when done."""
    slot = tl.program_id(0)
    if tl.load(active + slot) == 0:
        return
    offs = tl.arange(0, BT)
    e = tl.sum(tl.load(part + slot * TILES + offs, mask=offs < TILES, other=0.0), axis=0)
    k = tl.load(it + slot) + 1
    tl.store(it + slot, k)
    tl.store(par + slot, 1 - tl.load(par + slot))
    tl.store(err + slot, e)
    tl.store(active + slot, ((e > eps) & (k < max_iter)).to(tl.int32))


def _median_function():
    """median25(v0..v24) as a @triton.jit function: the compare-exchange network MEDIAN25 written out."""
    args = ", ".join(f"v{i}" for i in range(25))
    lines = [f"def median25({args}):"]
    for k, (op, a, b) in enumerate(MEDIAN25):
        lines.append(f"    v{25 + k} = tl.{'minimum' if op == 'min' else 'maximum'}(v{a}, v{b})")
    lines.append(f"    return v{24 + len(MEDIAN25)}")
    source = "\n".join(lines) + "\n"
    name = "<src.flow.triton_kernels median25>"
    linecache.cache[name] = (len(source), None, source.splitlines(True), name)  # so that Triton can read it
    scope = {"tl": tl, "__name__": __name__}
    exec(compile(source, name, "exec"), scope)
    return triton.jit(scope["median25"])


median25 = _median_function()


@triton.jit
def median_kernel(state, par, it, active, N, H, W, TILES_X, INNER: tl.constexpr, BH: tl.constexpr,
                  BW: tl.constexpr):
    """5x5 median (replicated border) of u1 (program_id 2 = 0) or u2 into the median fields, for the running
    slots about to start an outer iteration."""
    tile = tl.program_id(0)
    slot = tl.program_id(1)
    field = tl.program_id(2)
    if tl.load(active + slot) == 0:
        return
    if tl.load(it + slot) % INNER != 0:
        return
    pb = tl.load(par + slot)
    HW = H * W
    NHW = (N * HW).to(tl.int64)
    own = slot.to(tl.int64) * HW
    src = state + (pb * 6 + field) * NHW + own
    y = (tile // TILES_X) * BH + tl.arange(0, BH)[:, None]
    x = (tile % TILES_X) * BW + tl.arange(0, BW)[None, :]
    m = (y < H) & (x < W)
    r0 = tl.minimum(tl.maximum(y - 2, 0), H - 1) * W
    r1 = tl.minimum(tl.maximum(y - 1, 0), H - 1) * W
    r2 = tl.minimum(y, H - 1) * W
    r3 = tl.minimum(y + 1, H - 1) * W
    r4 = tl.minimum(y + 2, H - 1) * W
    c0 = tl.minimum(tl.maximum(x - 2, 0), W - 1)
    c1 = tl.minimum(tl.maximum(x - 1, 0), W - 1)
    c2 = tl.minimum(x, W - 1)
    c3 = tl.minimum(x + 1, W - 1)
    c4 = tl.minimum(x + 2, W - 1)
    med = median25(
        tl.load(src + r0 + c0, mask=m), tl.load(src + r0 + c1, mask=m), tl.load(src + r0 + c2, mask=m),
        tl.load(src + r0 + c3, mask=m), tl.load(src + r0 + c4, mask=m),
        tl.load(src + r1 + c0, mask=m), tl.load(src + r1 + c1, mask=m), tl.load(src + r1 + c2, mask=m),
        tl.load(src + r1 + c3, mask=m), tl.load(src + r1 + c4, mask=m),
        tl.load(src + r2 + c0, mask=m), tl.load(src + r2 + c1, mask=m), tl.load(src + r2 + c2, mask=m),
        tl.load(src + r2 + c3, mask=m), tl.load(src + r2 + c4, mask=m),
        tl.load(src + r3 + c0, mask=m), tl.load(src + r3 + c1, mask=m), tl.load(src + r3 + c2, mask=m),
        tl.load(src + r3 + c3, mask=m), tl.load(src + r3 + c4, mask=m),
        tl.load(src + r4 + c0, mask=m), tl.load(src + r4 + c1, mask=m), tl.load(src + r4 + c2, mask=m),
        tl.load(src + r4 + c3, mask=m), tl.load(src + r4 + c4, mask=m))
    tl.store(state + (MEDIAN_FIELD_C + field) * NHW + own + y * W + x, med, mask=m)


# -- the warp: bicubic remap of I1 and its gradient, and the constants of the inner iterations ----------------------

@triton.jit
def _cubic(x, HW_FMA: tl.constexpr):
    """OpenCV 5's bicubic weights (A = -0.75) at offsets x in [0, 1), rounded as tvl1._cubic_weights."""
    xx = x * x
    xm = x - 1
    w0 = -0.75 * (x * (xm * xm))
    zero = x * 0.0  # x >= 0: the constants as blocks of x's shape
    w1 = fma_ieee(fma_ieee(x, zero + 1.25, zero - 2.25, HW_FMA), xx, zero + 1.0, HW_FMA)
    w3 = -0.75 * (xx * (1 - x))
    w2 = ((1 - w0) - w1) - w3
    return w0, w1, w2, w3


@triton.jit
def _cubic_row(base, yy, ix, m, H, W, w0, w1, w2, w3, HW_FMA: tl.constexpr):
    """One row of four taps t0 * w0 then three fused multiply-adds; taps outside the image read 0."""
    vy = m & (yy >= 0) & (yy < H)
    row = base + yy * W
    t0 = tl.load(row + ix - 1, mask=vy & (ix >= 1) & (ix - 1 < W), other=0.0)
    t1 = tl.load(row + ix, mask=vy & (ix >= 0) & (ix < W), other=0.0)
    t2 = tl.load(row + ix + 1, mask=vy & (ix >= -1) & (ix + 1 < W), other=0.0)
    t3 = tl.load(row + ix + 2, mask=vy & (ix >= -2) & (ix + 2 < W), other=0.0)
    r = t0 * w0
    r = fma_ieee(t1, w1, r, HW_FMA)
    r = fma_ieee(t2, w2, r, HW_FMA)
    return fma_ieee(t3, w3, r, HW_FMA)


@triton.jit
def _remap(base, iy, ix, m, H, W, wx0, wx1, wx2, wx3, wy0, wy1, wy2, wy3, HW_FMA: tl.constexpr):
    """cv::remap INTER_CUBIC, BORDER_CONSTANT 0 at integer corners (iy, ix) and weights: tvl1.remap_cubic."""
    out = _cubic_row(base, iy - 1, ix, m, H, W, wx0, wx1, wx2, wx3, HW_FMA) * wy0
    out = fma_ieee(_cubic_row(base, iy, ix, m, H, W, wx0, wx1, wx2, wx3, HW_FMA), wy1, out, HW_FMA)
    out = fma_ieee(_cubic_row(base, iy + 1, ix, m, H, W, wx0, wx1, wx2, wx3, HW_FMA), wy2, out, HW_FMA)
    return fma_ieee(_cubic_row(base, iy + 2, ix, m, H, W, wx0, wx1, wx2, wx3, HW_FMA), wy3, out, HW_FMA)


@triton.jit
def warp_kernel(img, state, const, slots, par, N, H, W, TILES_X, HW_FMA: tl.constexpr, BH: tl.constexpr,
                BW: tl.constexpr):
    """For the slots listed (program_id 1): I1, I1x, I1y warped by u, and I1wx, I1wy, grad, rho_c from them."""
    tile = tl.program_id(0)
    slot = tl.load(slots + tl.program_id(1))
    pb = tl.load(par + slot)
    HW = H * W
    NHW = (N * HW).to(tl.int64)
    own = slot.to(tl.int64) * HW
    y = (tile // TILES_X) * BH + tl.arange(0, BH)[:, None]
    x = (tile % TILES_X) * BW + tl.arange(0, BW)[None, :]
    m = (y < H) & (x < W)
    o = y * W + x
    u1 = tl.load(state + pb * 6 * NHW + own + o, mask=m, other=0.0)
    u2 = tl.load(state + (pb * 6 + 1) * NHW + own + o, mask=m, other=0.0)
    mx = x.to(tl.float32) + u1
    my = y.to(tl.float32) + u2
    fx = tl.floor(mx)
    fy = tl.floor(my)
    wx0, wx1, wx2, wx3 = _cubic(mx - fx, HW_FMA)
    wy0, wy1, wy2, wy3 = _cubic(my - fy, HW_FMA)
    ix = fx.to(tl.int32)
    iy = fy.to(tl.int32)
    i1w = _remap(img + NHW + own, iy, ix, m, H, W, wx0, wx1, wx2, wx3, wy0, wy1, wy2, wy3, HW_FMA)
    i1wx = _remap(img + 2 * NHW + own, iy, ix, m, H, W, wx0, wx1, wx2, wx3, wy0, wy1, wy2, wy3, HW_FMA)
    i1wy = _remap(img + 3 * NHW + own, iy, ix, m, H, W, wx0, wx1, wx2, wx3, wy0, wy1, wy2, wy3, HW_FMA)
    i0 = tl.load(img + own + o, mask=m, other=0.0)
    tl.store(const + own + o, i1wx, mask=m)
    tl.store(const + NHW + own + o, i1wy, mask=m)
    tl.store(const + 2 * NHW + own + o, i1wx * i1wx + i1wy * i1wy, mask=m)
    tl.store(const + 3 * NHW + own + o, ((i1w - i1wx * u1) - i1wy * u2) - i0, mask=m)


# -- pyramid and flow resizes -------------------------------------------------------------------------------------

@triton.jit
def resize_kernel(src, dst, x0, x1, fx, y0, y1, fy, SH, SW, DH, DW, TILES_X, mul, HW_FMA: tl.constexpr,
                  MUL: tl.constexpr, BH: tl.constexpr, BW: tl.constexpr):
    """cv::resize INTER_LINEAR of image program_id 1 with precomputed taps (tvl1.linear_taps), times mul."""
    tile = tl.program_id(0)
    image = tl.program_id(1).to(tl.int64)
    y = (tile // TILES_X) * BH + tl.arange(0, BH)[:, None]
    x = (tile % TILES_X) * BW + tl.arange(0, BW)[None, :]
    my = y < DH
    mx = x < DW
    m = my & mx
    a = tl.load(x0 + x, mask=mx, other=0)
    b = tl.load(x1 + x, mask=mx, other=0)
    f = tl.load(fx + x, mask=mx, other=0.0)
    r0 = tl.load(y0 + y, mask=my, other=0) * SW
    r1 = tl.load(y1 + y, mask=my, other=0) * SW
    g = tl.load(fy + y, mask=my, other=0.0)
    base = src + image * SH * SW
    left = tl.load(base + r0 + a, mask=m, other=0.0)
    top = fma_ieee(tl.load(base + r0 + b, mask=m, other=0.0) - left, f, left, HW_FMA)
    left = tl.load(base + r1 + a, mask=m, other=0.0)
    bottom = fma_ieee(tl.load(base + r1 + b, mask=m, other=0.0) - left, f, left, HW_FMA)
    out = fma_ieee(bottom - top, g, top, HW_FMA)
    if MUL:
        out = out * mul
    tl.store(dst + image * DH * DW + y * DW + x, out, mask=m)


def tiles(h: int, w: int, tile: tuple[int, int]) -> tuple[int, int]:
    """(tiles along x, tiles in all) of an h x w image cut into tile = (BH, BW) blocks."""
    tx = triton.cdiv(w, tile[1])
    return tx, tx * triton.cdiv(h, tile[0])


def launch_options() -> dict:
    """Compile options of every launch: no contraction of multiplies and adds into FMAs."""
    return {"num_warps": NUM_WARPS, "enable_fp_fusion": False}


def hw_fma() -> bool:
    """Whether tl.fma is the hardware's fused multiply-add (compiled) or must be emulated (interpreter)."""
    return not interpreting()


def resize(x: torch.Tensor, size: tuple[int, int], scale: tuple[float, float], mul: float | None = None,
           tile: tuple[int, int] = TILE) -> torch.Tensor:
    """tvl1.resize_linear of (M, H, W) float32 (times mul, in float32, if given) with resize_kernel."""
    from src.flow.tvl1 import linear_taps

    m, h, w = x.shape
    dh, dw = size
    x0, x1, fx = (t.to(x.device) for t in linear_taps(w, dw, scale[1]))
    y0, y1, fy = (t.to(x.device) for t in linear_taps(h, dh, scale[0]))
    out = torch.empty(m, dh, dw, dtype=torch.float32, device=x.device)
    tx, n = tiles(dh, dw, tile)
    if m:
        resize_kernel[(n, m)](x.contiguous(), out, x0.int(), x1.int(), fx, y0.int(), y1.int(), fy, h, w, dh, dw, tx,
                              float(mul or 1.0), HW_FMA=hw_fma(), MUL=mul is not None, BH=tile[0], BW=tile[1],
                              **launch_options())
    return out
