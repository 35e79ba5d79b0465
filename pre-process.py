"""Turn a folder of videos and/or image sequences into I3D rgb and flow arrays, ready for training.

Examples (run from the repository root):
    python3 pre-process.py                                   # data/videos/raw -> data/videos/pre-processed
                                                             # data/images/raw -> data/images/pre-processed
    python3 pre-process.py my_raw my_out                     # my_raw/<class>/<video or frame folder>
    python3 pre-process.py my_raw my_out --crop 224 --dtype uint8 --workers 8
    python3 pre-process.py my_raw my_out --modalities rgb    # RGB only, no flow
    python3 pre-process.py my_raw my_out --shard 3/16        # job 3 of a 16-job cluster array
    python3 pre-process.py --from-seed old_data my_out       # old_data/<class>/<series>/test_rgb.npy, test_flow.npy
    python3 pre-process.py --annotations segments.csv recordings/ my_out   # cut labelled segments

Output: OUT_DIR/classes.txt, OUT_DIR/<split>/<class>/<item>/{rgb,flow}-SampleRate_<n>.npy and
OUT_DIR/manifest.csv; see `--help` for the recipe. Exit status 1 if any item failed or the job
could not run (one line on stderr says why).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from src.guard import add_guard_arguments, apply_guard_arguments
from src.flow import ALGORITHMS
from src.jobs import parse_shard
from src.media.transforms import STORAGE_DTYPES
from src.preprocess import Options, PreprocessError, run
from src.preprocess.legacy import import_legacy_layout

DEFAULT_PAIRS = [(Path("data/videos/raw"), Path("data/videos/pre-processed")),
                 (Path("data/images/raw"), Path("data/images/pre-processed"))]

EPILOG = """\
recipe (the official kinetics-i3d one by default):
  videos are resampled to --fps by presentation timestamps (FFmpeg fps-filter rule), rotation
  metadata applied; frame folders (png/jpg/jpeg/bmp, natural order: pic2 before pic10) and GIFs
  are taken as already sampled unless --folder-fps declares their rate. Frames are resized so the
  short side is --size (bilinear), RGB scaled to [-1, 1] as x/255*2-1. Flow is computed on the
  grayscale of the resized frames between consecutive kept frames, clipped to [-20, 20] px and
  divided by 20, channels (x, y): T rgb frames give T-1 flow frames. --crop stores centre crops
  of both. Arrays are (T, H, W, 3) and (T-1, H, W, 2), channels last.

storage (--dtype):
  float32 exact; float16 ~1e-3 relative; uint8 stores q = round((x+1)/2*255) and is read back as
  q/255*2-1 (src.arrays.load_array): lossless for RGB, flow error at most 1/255 in [-1, 1] units,
  i.e. 20/255 ~ 0.078 px.

layout:
  RAW_DIR/<class>/<video file or frame folder>; if RAW_DIR holds train/ and val/ (and optionally
  test/) folders of that shape, the split is kept, otherwise each class is split by --val-ratio
  from --seed (stratified, at least one training item per class). Hidden and non-media entries are
  skipped with a note, and so are empty class folders. OUT_DIR/<split>/<class>/<item>/... ;
  item = file name without extension.

annotation files (--annotations FILE):
  a CSV with a header: video (path relative to RAW_DIR; without an extension RAW_DIR/<video>.* is
  found), label (one, or several separated by ';'), optional start and end (seconds) and split
  (train, val or test). Kinetics-style columns youtube_id, time_start, time_end are understood;
  a plain `path label [label ...]` list (mmaction2) works too. Each row is an item: the segment
  [start, end) of the video (the frames whose time after resampling to --fps lies in it), or the
  whole video without times; a video is decoded once however many segments it has. Items go to
  OUT_DIR/<split>/<first label>/<video stem>_<start ms>-<end ms>ms/ (or <video stem>/); an item
  with several labels also gets labels.txt listing them all, and classes.txt lists every label.
  Rows with the same video and times merge their labels. Without a split column, whole recordings
  are split by --val-ratio (no recording in both train and val). A missing video, a segment
  outside its video, an unknown split or an empty label is one line in the log and the manifest;
  the rest goes on. A segment running past the video's end is cut at the end, with a warning.
  Nothing in the file decides where outputs go: a label or item name that is not a single folder name
  (empty, '.', '..', a '/' or '\\', a control character such as a newline) fails its row, and a video
  path that leaves RAW_DIR (../x.mp4, /abs/x.mp4) fails its row unless --allow-outside-raw-dir.

resuming and clusters:
  every array is written under a temporary name and renamed, so rerunning the same command skips
  finished items and redoes interrupted ones; --overwrite redoes everything. --shard i/n processes
  every n-th item (same split and classes.txt in every shard) and writes manifest-shard<i>of<n>.csv;
  each shard, when it ends, merges the shard manifests present into manifest.csv. The first run (or
  shard) into OUT_DIR records its recipe in OUT_DIR/recipe.json before any work; a run or shard with
  another recipe is refused (--overwrite replaces it). Manifest rows that do not parse and arrays that
  cannot be read back whole are redone, with a warning.
  A run locks OUT_DIR: a second run into it is refused (naming the first one's pid) unless it is
  another shard i/n of the same n; a killed run's lock is released with it, and its workers end too.
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(
        description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("raw_dir", nargs="?", type=Path, help="folder of <class>/<video or frame folder>, or of the videos --annotations names (default: data/videos/raw and data/images/raw)")
    p.add_argument("out_dir", nargs="?", type=Path, help="where arrays, classes.txt and manifest.csv go")
    p.add_argument("--fps", type=float, default=25.0, help="output frame rate for videos (default 25; 0 keeps the native rate)")
    p.add_argument("--folder-fps", type=float, default=None, help="declared rate of frame folders, to resample them to --fps (default: taken as already sampled)")
    p.add_argument("--size", type=int, default=256, help="short side after resizing, in pixels (default 256)")
    p.add_argument("--crop", type=int, default=None, help="store centre crops of this size, e.g. 224 (default: full resized frames)")
    p.add_argument("--sample-rate", type=int, default=1, help="keep every n-th frame after resampling; the file names carry n (default 1)")
    p.add_argument("--modalities", default="rgb,flow", help="comma list of rgb, flow (default rgb,flow)")
    p.add_argument("--flow", choices=[*ALGORITHMS, "none"], default="tvl1",
                   help="flow algorithm (default tvl1: OpenCV's TV-L1, what the pretrained flow stream expects, computed by "
                        "the batched PyTorch port on --flow-device; tvl1-opencv runs OpenCV's own, same flow within 0.02 px)")
    p.add_argument("--flow-device", default="auto", help="device of --flow tvl1: cpu, cuda, cuda:1, mps or auto (default auto: CUDA, then MPS, then CPU)")
    p.add_argument("--flow-batch", type=int, default=0,
                   help="--flow tvl1: frame pairs per batch, computed in this process on --flow-device while the workers "
                        "decode (default 0: 32 on a GPU; on a CPU each worker computes its items' flow a pair at a time)")
    p.add_argument("--flow-compile", choices=("auto", "yes", "no"), default="auto",
                   help="torch.compile the TV-L1 iteration (default auto: only for jobs long enough to pay the compile time)")
    p.add_argument("--dtype", choices=STORAGE_DTYPES, default="float32", help="storage type of the arrays (default float32)")
    p.add_argument("--val-ratio", type=float, default=0.2, help="fraction of each class put in val when RAW_DIR has no train/val folders; a class of 2 or more "
                   "items gets at least one (default: 0.2)")
    p.add_argument("--seed", type=int, default=0, help="seed of the train/val split (default 0)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="parallel processes (default: all cores); with --flow tvl1 they decode and resize while this process computes flow")
    p.add_argument("--shard", default="1/1", help="process shard i of n, e.g. 3/16, for cluster job arrays (default 1/1)")
    p.add_argument("--min-frames", type=int, default=2, help="items with fewer frames after sampling fail as too short (default 2)")
    p.add_argument("--annotations", type=Path, default=None, metavar="FILE", help="CSV (video,label[,start,end,split]) or `path label` list naming the items in RAW_DIR, e.g. segments of long recordings (see below)")
    p.add_argument("--allow-outside-raw-dir", action="store_true",
                   help="--annotations: read videos the file names outside RAW_DIR (../x.mp4, absolute paths); "
                        "by default such rows fail, so a downloaded annotation file cannot make the job read elsewhere")
    p.add_argument("--overwrite", action="store_true", help="redo finished items and replace a differing classes.txt")
    p.add_argument("--no-disk-check", action="store_true", help="skip the free-space check before starting")
    p.add_argument("--from-seed", action="store_true",
                   help="RAW_DIR is the original toolkit's layout <class>/<series>/test_rgb.npy and test_flow.npy: "
                        "link its arrays into OUT_DIR's layout (split by --val-ratio) instead of decoding videos; "
                        "--fps, --size, --flow declare the recipe they were made with (default: the official one)")
    add_guard_arguments(p)
    return p.parse_args(argv)


def shard_option(text: str) -> tuple[int, int]:
    """--shard i/n, as PreprocessError when it is not one."""
    try:
        return parse_shard(text)
    except ValueError as exc:
        raise PreprocessError(str(exc)) from None


def main(argv: list[str] | None = None) -> int:
    """Run pre-processing for the given or the default folders; exit status 1 on any failure."""
    args = parse_args(argv)
    apply_guard_arguments(args)
    modalities = tuple(m.strip() for m in args.modalities.split(",") if m.strip())
    if args.flow == "none":
        modalities = tuple(m for m in modalities if m != "flow")
    try:
        opts = Options(
            fps=args.fps or None, folder_fps=args.folder_fps, size=args.size, crop=args.crop,
            sample_rate=args.sample_rate, modalities=modalities, flow="tvl1" if args.flow == "none" else args.flow,
            dtype=args.dtype, val_ratio=args.val_ratio, seed=args.seed, workers=args.workers,
            overwrite=args.overwrite, shard=shard_option(args.shard), min_frames=args.min_frames,
            disk_check=not args.no_disk_check, flow_device=args.flow_device, flow_batch=args.flow_batch,
            flow_compile=args.flow_compile, outside_ok=args.allow_outside_raw_dir,
        )
        if args.from_seed:
            if not (args.raw_dir and args.out_dir):
                raise PreprocessError("--from-seed needs SEED_DIR and OUT_DIR")
            return 1 if import_legacy_layout(args.raw_dir, args.out_dir, opts) else 0
        if args.annotations and not (args.raw_dir and args.out_dir):
            raise PreprocessError("--annotations needs RAW_DIR (where its videos are) and OUT_DIR")
        if args.annotations and not args.annotations.is_file():
            raise PreprocessError(f"--annotations {args.annotations}: no such file")
        if args.raw_dir and args.out_dir:
            pairs = [(args.raw_dir, args.out_dir)]
        elif args.raw_dir:
            raise PreprocessError("give both RAW_DIR and OUT_DIR, or neither to use data/{videos,images}/raw")
        else:
            pairs = [(raw, out) for raw, out in DEFAULT_PAIRS if raw.is_dir()]
            if not pairs:
                tried = " or ".join(str(Path.cwd() / raw) for raw, _ in DEFAULT_PAIRS)
                raise PreprocessError(f"no RAW_DIR given and neither {tried} exists; pass RAW_DIR OUT_DIR (see --help)")
        failed = sum(run(raw, out, opts, annotations=args.annotations) for raw, out in pairs)
    except PreprocessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: finished items are kept; rerun the same command to resume", file=sys.stderr)
        return 130
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
