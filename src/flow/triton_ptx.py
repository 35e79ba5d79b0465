"""Compile the TV-L1 Triton kernels for a CUDA architecture without a GPU and report what the PTX does.

What the interpreter cannot show: that division and square roots are the IEEE ones (div.rn, sqrt.rn, never
div.full / div.approx / sqrt.approx), that no multiply-add was contracted where OpenCV rounds twice (the only
fma instructions are the tl.fma sites, once per pixel each), and that nothing spills (ptxas -v, Triton's own).
"""
from __future__ import annotations

import re
import subprocess
import tempfile
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from src.flow import triton_kernels as K

F32, I32, F64 = "*fp32", "*i32", "*fp64"
_GRID = dict(N="i32", H="i32", W="i32", TILES_X="i32")
_TILE = dict(BH=K.TILE[0], BW=K.TILE[1])


def kernel_variants() -> dict[str, tuple]:
    """name -> (kernel, argument types, constexprs, fused multiply-adds per pixel) as the driver launches them."""
    step = dict(state=F32, const=F32, par=I32, it=I32, active=I32, part=F64, **_GRID, l_t="fp32", theta="fp32",
                taut="fp32")
    warp = dict(img=F32, state=F32, const=F32, slots=I32, par=I32, **_GRID)
    resize = dict(src=F32, dst=F32, x0=I32, x1=I32, fx=F32, y0=I32, y1=I32, fy=F32, SH="i32", SW="i32", DH="i32",
                  DW="i32", TILES_X="i32", mul="fp32")
    return {
        "step": (K.step_kernel, step, dict(INNER=30, **_TILE), 0),
        "finalize": (K.finalize_kernel, dict(part=F64, par=I32, it=I32, active=I32, err=F64, TILES="i32",
                                             eps="fp32", max_iter="i32"), dict(BT=128), 0),
        "median": (K.median_kernel, dict(state=F32, par=I32, it=I32, active=I32, **_GRID), dict(INNER=30, **_TILE), 0),
        # 2 fused in each of the two sets of cubic weights, 15 per channel (4 rows of 3, then 3) for 3 channels
        "warp": (K.warp_kernel, warp, dict(HW_FMA=True, **_TILE), 2 * 2 + 3 * 15),
        "resize": (K.resize_kernel, resize, dict(HW_FMA=True, MUL=True, **_TILE), 3),
        "resize_emulated": (K.resize_kernel, resize, dict(HW_FMA=False, MUL=False, **_TILE), 0),
    }


def compile_report(arch: int = 90) -> dict[str, dict]:
    """Per kernel: PTX instruction counts of float ops, registers, spill and stack bytes, .local use."""
    report = {}
    ptxas = triton.knobs.nvidia.ptxas.path
    for name, (fn, sig, cx, fma_sites) in kernel_variants().items():
        signature = {**sig, **{k: "constexpr" for k in cx}}
        opts = {**K.launch_options()}
        compiled = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=cx),
                                  target=GPUTarget("cuda", arch, 32), options=opts)
        ptx = compiled.asm["ptx"]
        ops: dict[str, int] = {}
        for m in re.finditer(r"^\s*((?:div|sqrt|rsqrt|rcp|fma|ex2|lg2|mad)\.[a-z0-9.]+)", ptx, re.M):
            ops[m.group(1)] = ops.get(m.group(1), 0) + 1
        target = re.search(r"^\.target\s+(\S+)", ptx, re.M).group(1)
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / f"{name}.ptx"
            src.write_text(ptx)
            info = subprocess.run([ptxas, f"-arch={target}", "-v", str(src), "-o", str(Path(tmp) / "k.cubin")],
                                  capture_output=True, text=True, check=True).stderr
        regs = int(re.search(r"Used (\d+) registers", info).group(1))
        spill = sum(int(n) for n in re.findall(r"(\d+) bytes spill (?:stores|loads)", info))
        stack = int(re.search(r"(\d+) bytes stack frame", info).group(1))
        tile = cx.get("BH", 1) * cx.get("BW", 1)
        report[name] = dict(ops=ops, registers=regs, spill_bytes=spill, stack_bytes=stack,
                            local=bool(re.search(r"\.local\b", ptx)), fma_sites=fma_sites,
                            pixels_per_thread=max(1, tile // (32 * K.NUM_WARPS)))
    return report
