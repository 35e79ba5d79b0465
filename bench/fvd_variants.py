"""The effect of the common FVD port mistakes, measured on real clips: FVD between two sets under the reference
protocol (fvd.py --protocol tf) and under each deviation, with everything else held fixed.

Sets: A = --clips-per-video clips of --frames frames from arm_wrestling.mp4, B = the same from
cleaning_pool.mp4 (the shared Kinetics clips; back to back from frame 0), or any two folders.
Variants, each one change from the reference:
    half-pixel resize   bilinear with half-pixel centres (torch F.interpolate, OpenCV, TF2 tf.image.resize)
    short side + crop   short side to 224 (OpenCV bilinear), centre 224x224 crop, instead of squashing
    [0, 1] input        x / 255 instead of 2 x / 255 - 1
    1024-d features     the average-pooled Mixed_5c features instead of the 400 logits
    fp32 fast path      the fp32 fast path (fvd.py --fast) instead of the plain model
    random starts       --start random with seeds 0 and 1 instead of frame 0

Example (from the repository root):
    python bench/fvd_variants.py                      # 4 clips of 16 frames per set
    python bench/fvd_variants.py --a real/ --b generated/ --clips-per-video 1
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from src.device import machine_description  # noqa: E402
from src.fvd import Embedding, Protocol, activation_statistics, frechet_distance, open_set  # noqa: E402
from src.fvd.clips import read_clips  # noqa: E402
from src.fvd.resize import resize_bilinear_tf1  # noqa: E402
from src.measure.speed import load_average  # noqa: E402
from src.media import center_crop, resize_short_side  # noqa: E402

VIDEOS = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "videos"


def squash_tf1(clip: np.ndarray) -> torch.Tensor:
    return resize_bilinear_tf1(torch.from_numpy(clip))


def squash_half_pixel(clip: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(clip).permute(0, 3, 1, 2).float()
    return F.interpolate(x, size=(224, 224), mode="bilinear", align_corners=False).permute(0, 2, 3, 1)


def short_side_crop(clip: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(center_crop(resize_short_side(clip, 224), 224))).float()


def network_input(frames: torch.Tensor, unit_range: bool = False) -> torch.Tensor:
    """(T, 224, 224, 3) pixels -> (3, T, 224, 224) in [-1, 1] (or [0, 1])."""
    x = frames / 255.0 if unit_range else 2.0 * frames / 255.0 - 1.0
    return x.permute(3, 0, 1, 2)


def embed(model, inputs: list[torch.Tensor], batch: int) -> tuple[np.ndarray, np.ndarray]:
    """(logits averaged over time, average-pooled Mixed_5c features) of network-ready clips."""
    logits, pooled = [], []
    with torch.no_grad():
        for i in range(0, len(inputs), batch):
            x = torch.stack(inputs[i:i + batch])
            features = model.forward_features(x)
            logits.append(model.forward_head(features).numpy())
            pooled.append(features.float().mean(dim=(2, 3, 4)).numpy())
    return np.concatenate(logits), np.concatenate(pooled)


def fvd(a: np.ndarray, b: np.ndarray) -> float:
    sa, sb = activation_statistics(a, Protocol()), activation_statistics(b, Protocol())
    return frechet_distance(sa.mean, sa.covariance, sb.mean, sb.covariance)


def main() -> None:
    """Measure and print the table."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--a", help="set A (default: arm_wrestling.mp4 of ../shared/data/videos)")
    p.add_argument("--b", help="set B (default: cleaning_pool.mp4)")
    p.add_argument("--frames", type=int, default=16, help="frames per clip (default: %(default)s)")
    p.add_argument("--clips-per-video", type=int, default=4, help="(default: %(default)s)")
    p.add_argument("--batch", type=int, default=4, help="(default: %(default)s)")
    args = p.parse_args()
    print(machine_description())
    print(load_average())
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fvd-variants-") as tmp:
        specs = []
        for spec, default in ((args.a, "arm_wrestling.mp4"), (args.b, "cleaning_pool.mp4")):
            if spec is None:
                folder = Path(tmp) / default
                folder.mkdir()
                (folder / default).symlink_to(VIDEOS / default)
                spec = str(folder)
            specs.append(spec)
        sets = [open_set(s) for s in specs]

        def clips(protocol: Protocol) -> list[list[np.ndarray]]:
            return [[c for i, item in enumerate(s.items) for c in read_clips(item, protocol, i, s.array)] for s in sets]

        fixed = clips(Protocol(frames=args.frames, clips_per_video=args.clips_per_video))
        plain = Embedding("cpu")
        fast = Embedding("cpu", "fp32")
        rows: list[tuple[str, float]] = []

        def run(name: str, prepare, model=plain.model, raw=fixed, unit_range=False) -> tuple[np.ndarray, ...]:
            a, b = (embed(model, [network_input(prepare(c), unit_range) for c in side], args.batch) for side in raw)
            rows.append((name, fvd(a[0], b[0])))
            return a, b

        a, b = run("tf (reference)", squash_tf1)
        rows.append(("1024-d pooled features", fvd(a[1], b[1])))
        run("half-pixel bilinear resize", squash_half_pixel)
        run("short side 224 + centre crop", short_side_crop)
        run("[0, 1] input instead of [-1, 1]", squash_tf1, unit_range=True)
        run("fp32 fast path", squash_tf1, model=fast.model)
        for seed in (0, 1):
            run(f"random starts, seed {seed}", squash_tf1,
                raw=clips(Protocol(frames=args.frames, clips_per_video=args.clips_per_video, start=None, seed=seed)))
    n = [len(side) for side in fixed]
    print(f"A {specs[0]} ({n[0]} clips), B {specs[1]} ({n[1]} clips), {args.frames} frames each; "
          f"{time.perf_counter() - started:.0f} s")
    reference = rows[0][1]
    print("| variant | FVD | vs tf |\n|---|---:|---:|")
    for name, value in rows:
        change = value / reference - 1
        print(f"| {name} | {value:.4f} | {f'{change:+.2%}' if abs(change) >= 1e-4 else f'{change:+.1e}'} |")


if __name__ == "__main__":
    main()
