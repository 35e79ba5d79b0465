"""The self-check's real checks: decoding, each TV-L1 implementation against OpenCV, the fast path against the plain
float32 model at each precision, FVD's reference example; with their speeds."""
from __future__ import annotations

import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from src.guard import triton_version
from src.paths import REPO_ROOT

SHARED_DATA = REPO_ROOT.parent / "shared" / "data"  # the real test clips, where the checkout has them beside it
CLIP = "videos/arm_wrestling.mp4"
REFERENCE_FVD = 133.908  # frechet_video_distance.py's example: 16 videos of 15 frames 64x64, zeros vs 255
FVD_TOLERANCE = 0.01


@dataclass
class Check:
    """One line of the report: PASS, FAIL or SKIPPED, what was found, and the figures behind it."""

    name: str
    status: str
    detail: str
    figures: dict = field(default_factory=dict)

    def line(self) -> str:
        """'PASS     name: detail'."""
        return f"{self.status:<8} {self.name}: {self.detail}"

    def as_dict(self) -> dict:
        """JSON-ready."""
        return asdict(self)


def failed(name: str, exc: BaseException) -> Check:
    """A check that raised: FAIL with the exception in one line."""
    return Check(name, "FAIL", f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}")


def shared_clip() -> Path | None:
    """The real clip the checks use when ../shared is beside the checkout."""
    path = SHARED_DATA / CLIP
    return path if path.exists() else None


def check_decoding() -> Check:
    """Decode a real clip (or a video written here with OpenCV) through the toolkit's reader."""
    from src.media import read_frames

    name = "decoding"
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = shared_clip()
            if path is None:
                path = Path(tmp) / "moving.avi"
                writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25, (64, 48))
                for t in range(12):
                    writer.write(np.roll(np.tile(np.arange(64, dtype=np.uint8)[None, :, None] * 4, (48, 1, 3)), t, 1))
                writer.release()
            start = time.perf_counter()
            frames, info = read_frames(path)
            seconds = time.perf_counter() - start
    except Exception as exc:  # the report must go on whatever the decoder does
        return failed(name, exc)
    if len(frames) == 0:
        return Check(name, "FAIL", f"{path.name}: no frames decoded")
    fps = len(frames) / max(seconds, 1e-9)
    return Check(name, "PASS", f"{path.name}: {len(frames)} frames {frames.shape[2]}x{frames.shape[1]} at 25 fps by "
                               f"OpenCV's FFmpeg backend, {fps:.0f} frames/s",
                 {"frames": len(frames), "frames_per_s": round(fps, 1)})


def frame_pairs() -> tuple[np.ndarray, np.ndarray, str]:
    """Consecutive grayscale pairs for the TV-L1 checks: 2 pairs of the real clip at 96x128 where ../shared is
    beside the checkout, else 2 pairs of a smooth moving texture."""
    from src.flow.guard import texture_pairs

    path = shared_clip()
    if path is not None:
        cap = cv2.VideoCapture(str(path))
        gray = []
        while len(gray) < 3:
            ok, frame = cap.read()
            if not ok:
                break
            gray.append(cv2.resize(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY), (128, 96), interpolation=cv2.INTER_AREA))
        cap.release()
        if len(gray) == 3:
            frames = np.stack(gray)
            return frames[:-1], frames[1:], f"2 pairs of {path.name} at 96x128"
    prev, nxt = texture_pairs(2, (96, 128))
    return prev, nxt, "2 pairs of a moving texture at 96x128"


def tvl1_checks(device_list: list[dict], full: bool) -> list[Check]:
    """Each TV-L1 implementation available here against OpenCV's own on the same pairs: EPE, bit-exact, pairs/s."""
    from src.flow.guard import BOUND_PX, check_tvl1, reference_flows, run_tvl1

    prev, nxt, what = frame_pairs()
    start = time.perf_counter()
    reference, source = reference_flows(prev, nxt)
    ref_speed = len(prev) / (time.perf_counter() - start)
    checks = [Check("tvl1 opencv on cpu", "PASS", f"the reference ({source}): {what}, {ref_speed:.2f} pairs/s",
                    {"pairs_per_s": round(ref_speed, 3)})]
    for d in device_list:
        device = torch.device(d["device"])
        todo = ["triton", "pytorch"] if device.type == "cuda" else ["pytorch"]
        if device.type == "cpu":
            todo.append("pytorch-compiled")
        for implementation in todo:
            name = f"tvl1 {implementation} on {device}"
            if implementation == "triton" and triton_version() is None:
                checks.append(Check(name, "SKIPPED", "triton is not installed"))
                continue
            if implementation == "pytorch-compiled" and not full:
                checks.append(Check(name, "SKIPPED", "--full: compiling takes 1 to 3 minutes on a CPU"))
                continue
            if source != "OpenCV" and device.type == "cpu" and implementation == "pytorch":
                checks.append(Check(name, "SKIPPED", f"it is the reference here: {source}"))
                continue
            result = check_tvl1(implementation, device, prev, nxt, (reference, source))
            if not result.figures:
                checks.append(Check(name, "FAIL", result.detail))
                continue
            f = result.figures
            seconds, first = f["seconds"], ""
            if implementation == "pytorch-compiled" or device.type != "cpu":  # the first call compiled the kernels
                start = time.perf_counter()
                run_tvl1(implementation, device, prev, nxt)
                seconds, first = time.perf_counter() - start, f", the first call with compiling {f['seconds']:.1f} s"
            speed = f["pairs"] / max(seconds, 1e-9)
            detail = (f"{what}: max EPE {f['max_epe']:.3g} px, mean {f['mean_epe']:.3g} px (bound {BOUND_PX}), "
                      f"bit-exact {'yes' if f['bit_exact'] else 'no'}; {speed:.2f} pairs/s{first}")
            checks.append(Check(name, "PASS" if result.ok else "FAIL", detail, {**f, "pairs_per_s": round(speed, 3)}))
    if not any(d["device"].startswith("cuda") for d in device_list):
        checks.append(Check("tvl1 triton", "SKIPPED", "the Triton kernels run on CUDA only (tests/test_flow_triton.py "
                                                      "runs them in Triton's interpreter)"))
    return checks


def check_model(x: torch.Tensor) -> tuple[torch.nn.Module, str]:
    """rgb_scratch where its converted weights are in the model folder (nothing is downloaded), else a seeded
    random-init I3D whose batch norms take their statistics from the check clip: left at their defaults, the
    features vanish and any path would agree with any other on logits of ~0."""
    from src.model import I3D
    from src.weights import cached_path, i3d

    if cached_path("rgb_scratch").exists():
        return i3d("rgb_scratch").eval(), "rgb_scratch"
    torch.manual_seed(0)
    model = I3D()
    norms = [m for m in model.modules() if hasattr(m, "running_mean") and hasattr(m, "momentum")]
    for norm in norms:
        norm.momentum = 1.0  # running statistics = this batch's
    with torch.no_grad():
        model.train()(x)
    return model.eval(), "random-init weights (seed 0, batch-norm statistics of the clip; no rgb_scratch here)"


def check_input() -> tuple[torch.Tensor, str]:
    """(1, 3, 16, 224, 224): 16 central frames of the real clip by the RGB recipe, else a moving texture."""
    from src.clips import clip_to_tensor, load_clip
    from src.inference.guard import texture_clip

    path = shared_clip()
    if path is not None:
        return clip_to_tensor(load_clip(path, frames=16)), f"16 frames of {path.name}"
    return texture_clip(), "16 frames of a moving texture"


def timed(model: torch.nn.Module, x: torch.Tensor, warm_up: bool = True) -> tuple[torch.Tensor, float]:
    """Logits of one call (after a warm-up call: the fast path packs its weights on the first) and its seconds."""
    with torch.no_grad():
        if warm_up:
            model(x)
        if x.device.type == "cuda":
            torch.cuda.synchronize(x.device)
        start = time.perf_counter()
        out = model(x).float().cpu()
        if x.device.type == "cuda":
            torch.cuda.synchronize(x.device)
    return out, time.perf_counter() - start


def fast_path_checks(device_list: list[dict]) -> list[Check]:
    """The fast path at each precision this machine offers against the plain float32 model: max |dlogit|, top-1
    agreement, clips/s of both."""
    from src.inference import PRECISIONS, check_precision, fast_bound, optimize_for_inference

    try:
        x_cpu, what = check_input()
        model, weights = check_model(x_cpu)
    except Exception as exc:  # noqa: BLE001 - the report goes on
        return [failed("fast path", exc)]
    checks = []
    for d in device_list:
        device = torch.device(d["device"])
        try:
            plain = model.to(device)
            x = x_cpu.to(device)
            expected, plain_s = timed(plain, x, warm_up=device.type != "cpu")
        except Exception as exc:  # noqa: BLE001
            checks.append(failed(f"plain model on {device}", exc))
            continue
        for precision in PRECISIONS[1:]:
            name = f"fast path {precision} on {device}"
            try:
                check_precision(precision, device)
            except ValueError as exc:
                checks.append(Check(name, "SKIPPED", str(exc).split(": ", 1)[-1].split("; use")[0]))
                continue
            if precision == "bf16" and device.type == "cuda" and not d.get("bf16"):
                checks.append(Check(name, "SKIPPED", "this GPU has no bf16"))
                continue
            try:
                got, fast_s = timed(optimize_for_inference(model, device, precision), x)
            except Exception as exc:  # noqa: BLE001
                checks.append(failed(name, exc))
                continue
            diff = float((got - expected).abs().max()) if torch.isfinite(got).all() else float("inf")
            agree = bool((got.argmax(1) == expected.argmax(1)).all())
            bound = fast_bound(precision, device)
            figures = {"max_dlogit": diff, "top1_agree": agree, "bound": bound, "weights": weights, "input": what,
                       "clips_per_s": round(1 / fast_s, 3), "plain_clips_per_s": round(1 / plain_s, 3)}
            detail = (f"{what}, {weights}: max |dlogit| {diff:.3g} (bound {bound:g}), top-1 "
                      f"{'agrees' if agree else 'differs'}; {1 / fast_s:.2f} clips/s against the plain model's "
                      f"{1 / plain_s:.2f}")
            checks.append(Check(name, "PASS" if diff <= bound else "FAIL", detail, figures))
    model.to("cpu")
    return checks


def fvd_check(device_list: list[dict], full: bool) -> list[Check]:
    """FVD of the TF reference's own example (16 videos of 15 frames 64x64, zeros against 255) against 133.908."""
    from src.fvd import Embedding, Protocol, activation_statistics, frechet_distance, video_activations
    from src.weights import cached_path

    checks = []
    for d in device_list:
        device = torch.device(d["device"])
        name = f"fvd reference example on {device}"
        if device.type == "cpu" and not full:
            checks.append(Check(name, "SKIPPED", "--full on a CPU (two 15-frame clips at 224x224, ~10 s)"))
            continue
        if not cached_path("rgb_scratch").exists():
            checks.append(Check(name, "SKIPPED", "rgb_scratch is not in the model folder "
                                                  "(python i3d_tf_to_pt.py --rgb --checkpoint scratch)"))
            continue
        try:
            start = time.perf_counter()
            videos = np.stack([np.zeros((15, 64, 64, 3), np.uint8), np.full((15, 64, 64, 3), 255, np.uint8)])
            zeros, ones = video_activations(videos, Embedding(device))
            seconds = time.perf_counter() - start
            # the example's 16 identical videos per set have identical activations: one of each is computed
            a = activation_statistics(np.repeat(zeros[None], 16, 0), Protocol())
            b = activation_statistics(np.repeat(ones[None], 16, 0), Protocol())
            fvd = frechet_distance(a.mean, a.covariance, b.mean, b.covariance)
        except Exception as exc:  # noqa: BLE001
            checks.append(failed(name, exc))
            continue
        ok = abs(fvd - REFERENCE_FVD) <= FVD_TOLERANCE
        checks.append(Check(name, "PASS" if ok else "FAIL",
                            f"{fvd:.3f} against the reference's {REFERENCE_FVD} (tolerance {FVD_TOLERANCE}); "
                            f"{2 / seconds:.2f} clips/s (plain float32 model)",
                            {"fvd": fvd, "clips_per_s": round(2 / seconds, 3)}))
    return checks
