"""Fréchet Video Distance between two sets of videos, exactly as google-research's TF reference computes it
(TF1 bilinear resize to 224x224, 2x/255-1, the time-averaged logits of DeepMind's rgb_scratch I3D,
TF-GAN's Fréchet distance in float64), without TensorFlow; or under another paper's protocol
(--protocol list), with KVD and precision/recall from the same activations. See docs/fvd.md.

A and B are each a folder (searched recursively) of videos, frame folders or .npy clips (T, H, W, 3);
a .txt list of such paths; an .npy/.npz array (N, T, H, W, 3) of uint8 or float in [0, 255]; or a
statistics file written by --save-stats. Float clips in [0, 1] or [-1, 1] are refused; uint8 clips holding
only 0 and 1 are warned about. With two statistics files, clip options that differ from theirs are refused.

Examples:
    python fvd.py real_videos/ generated_videos/ --json
    python fvd.py real_videos/ --save-stats real_stats.npz --max-videos 2048     # A's statistics only
    python fvd.py real_stats.npz generated_videos/ --max-videos 2048
    python fvd.py zeros.npy ones.npy --frames all                                # the reference's own example
        (FVD 133.908; the files: z = np.zeros((16, 15, 64, 64, 3), np.uint8); np.save("zeros.npy", z);
         np.save("ones.npy", z + 255))
    python fvd.py real/ generated/ --protocol stylegan-v --metrics fvd,kvd,precision,recall --trials 3 --json
    python fvd.py real/ --protocol stylegan-v --shard 2/4 --save-activations real_2.npz   # one shard's activations
    python fvd.py real_1.npz,real_2.npz,real_3.npz,real_4.npz gen.npz --protocol stylegan-v
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from src.cli import Parser, add_inference_arguments, check_output, chosen_precision, one_line, parse_fps
from src.clips import InputError
from src.fvd import (NETWORKS, PROTOCOLS, MetricsResult, Protocol, RunOptions, protocol_list, recipe, run_fvd,
                     run_metrics)
from src.fvd.activation_files import is_activations_file
from src.fvd.metrics import parse_metrics
from src.fvd.pipeline import default_workers
from src.guard import add_guard_arguments, apply_guard_arguments
from src.jobs.shards import parse_shard, shard_from_env
from src.weights import WeightsUnavailable


def number_or(word: str):
    """An argparse type: an integer, or `word` (read as None)."""
    def parse(text: str) -> int | None:
        if text == word:
            return None
        try:
            return int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number or '{word}', got {text!r}") from None
    return parse


# The options that decide which clips are taken (and how many videos): a statistics file has them fixed.
CLIP_OPTIONS = {"frames": "--frames", "clips_per_video": "--clips-per-video", "start": "--start",
                "stride": "--stride", "seed": "--seed", "fps": "--fps", "max_videos": "--max-videos",
                "subsample": "--subsample"}


def check_save_paths(paths: list[str], option: str = "--save-stats") -> None:
    """Raise InputError for a --save-stats / --save-activations file that is not an .npz, or one path for both sets."""
    what = "statistics" if option == "--save-stats" else "activations"
    for path in paths:
        if Path(path).suffix.lower() != ".npz":
            raise InputError(f"{option} {path}: {what} are saved as .npz, the suffix fvd.py reads them back "
                             f"by; name it {Path(path).with_suffix('.npz').name} or {Path(path).name}.npz")
    if len(paths) == 2 and Path(paths[0]).resolve() == Path(paths[1]).resolve():
        raise InputError(f"{option} {paths[0]} {paths[1]}: one file for both sets; B's {what} would "
                         "replace A's; give two different files")


def given_options(parser: argparse.ArgumentParser) -> set[str]:
    """The clip options typed on the command line (not left at their defaults)."""
    unset = object()
    typed = parser.parse_args(namespace=argparse.Namespace(**{dest: unset for dest in CLIP_OPTIONS}))
    return {dest for dest in CLIP_OPTIONS if getattr(typed, dest) is not unset}


def check_unused_options(given: set[str], protocol: Protocol, result, args: argparse.Namespace) -> None:
    """Raise InputError naming the clip options given when both sets are statistics files and the files were
    made otherwise (the files' clips are fixed; an option recording the same value is accepted)."""
    saved, typed = result.a.protocol.as_dict(), protocol.as_dict()
    unused = [f"{CLIP_OPTIONS[dest]} {typed[dest]}" for dest in sorted(given & set(saved))
              if typed[dest] != saved[dest]]
    if "max_videos" in given:
        unused.append(f"--max-videos {args.max_videos}")
    if unused:
        raise InputError(f"{args.a} and {args.b} are statistics files: {', '.join(unused)} cannot apply (their clips "
                         f"were taken under {result.a.protocol.describe()}, {result.a.n} and {result.b.n} clips); "
                         "drop these options or recompute the statistics from the videos")


def metrics_list(text: str) -> tuple[str, ...]:
    """An argparse type: a comma-separated list of metric names."""
    try:
        return parse_metrics(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def main() -> int:
    parser = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", metavar="A", nargs="?", help="the first set (conventionally the real videos)")
    parser.add_argument("b", metavar="B", nargs="?",
                        help="the second set (omit it with --save-stats or --save-activations to only save A's)")
    parser.add_argument("--protocol", choices=(*PROTOCOLS, "list"), default="tf",
                        help="tf: google-research's frechet_video_distance.py; the others are papers' protocols, "
                             "'list' prints each with its parameters and where they come from (default: %(default)s)")
    parser.add_argument("--frames", type=number_or("all"), default=16, metavar="N|all",
                        help="clip length in frames, at least 9; 'all': each video whole, tf only (default: 16)")
    parser.add_argument("--subsample", type=int, default=None, metavar="S",
                        help="frame step within a clip for the sampled protocols: frames o, o+S, ... (stylegan-v's "
                             "fvd2048_128f_subsample8f is --frames 16 --subsample 8; not --stride, which spaces "
                             "clips) (default: the protocol's)")
    parser.add_argument("--network", choices=NETWORKS, default=None,
                        help="tf: batch-norm epsilon 1e-3 as the TF network; videogpt-eps: 1e-5 as the PyTorch "
                             "ports of VideoGPT, TATS, DIGAN, cd-fvd (default: the protocol's)")
    parser.add_argument("--metrics", type=metrics_list, default=("fvd",), metavar="LIST",
                        help="comma-separated from fvd, kvd, precision, recall (default: fvd)")
    parser.add_argument("--trials", type=int, default=None, metavar="K",
                        help="repeat the sampling with seeds seed..seed+K-1; mean and NAME_std of each metric "
                             "(default: the protocol's, 1 but for digan's 10)")
    parser.add_argument("--clips-per-video", type=int, default=1, metavar="K",
                        help="clips taken from each video; with --start random at most the video's distinct starts "
                             "(default: 1)")
    parser.add_argument("--start", type=number_or("random"), default=0, metavar="F|random",
                        help="first frame of the first clip, or 'random' (uniform, with --seed) (default: 0)")
    parser.add_argument("--stride", type=int, default=None,
                        help="frames between the starts of a video's clips (default: --frames, back to back)")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed of --start random or of a sampled protocol (default: the protocol's, 0 but for "
                             "digan's 42)")
    parser.add_argument("--max-videos", type=int, default=None, metavar="N",
                        help="use the first N videos of each set (natural order of paths, a list's own order, "
                             "an array's first rows); for a sampled protocol its N: videos per set, or clips drawn "
                             "over all windows for tats, digan, videogpt (default: the protocol's)")
    parser.add_argument("--fps", type=parse_fps, default=None, metavar="native|F",
                        help="resample video files to F frames/s by timestamps (default: native, as given)")
    parser.add_argument("--batch", type=int, default=8, help="clips per network batch (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=default_workers(),
                        help="decoding processes; 0 decodes here (default: %(default)s)")
    add_inference_arguments(parser, precision="fp32", plain=True,
                            precision_help="protocol tf accepts only fp32: FVD is computed in float32 (the plain model, "
                                           "or --fast: the fp32 fast path); the other choices are refused")
    add_guard_arguments(parser, flow=False)
    parser.add_argument("--save-stats", nargs="+", default=(), metavar="FILE",
                        help="save A's statistics to FILE (and B's to a second, different FILE); names end in .npz")
    parser.add_argument("--save-activations", nargs="+", default=(), metavar="FILE",
                        help="save A's per-clip activations (and B's to a second FILE) as .npz, to recompute any "
                             "metric without the network")
    parser.add_argument("--shard", default=None, metavar="i/n",
                        help="compute shard i of n of the set's clips (by video; default: SLURM_ARRAY_TASK_ID/"
                             "COUNT if set and one set A is saved with --save-activations, else all)")
    parser.add_argument("--allow-mixed-protocols", action="store_true",
                        help="compare a cd-fvd .pkl (its own network and preprocessing) with this protocol's set")
    parser.add_argument("--overwrite", action="store_true", help="replace existing --save-stats/--save-activations "
                        "files")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object (fvd, n_a, n_b, frames, protocol, ...)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args()
    apply_guard_arguments(args)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    if args.protocol == "list":
        print(protocol_list())
        return 0
    if args.a is None:
        parser.error("the following arguments are required: A")

    try:
        if args.precision != "fp32":
            raise InputError(f"--precision {args.precision}: FVD under protocol {args.protocol} is computed in "
                             "float32 (the plain model, or --fast: the fp32 fast path)")
        for value, option in ((args.batch, "--batch"), (args.max_videos, "--max-videos")):
            if value is not None and value < 1:
                raise InputError(f"{option} must be 1 or more, got {value}")
        if args.compile and not args.fast:
            raise InputError("--compile applies to the fast path: add --fast")
        if args.workers < 0:
            raise InputError(f"--workers must be 0 or more, got {args.workers}")
        if len(args.save_stats) > (2 if args.b else 1):
            raise InputError(f"--save-stats takes one FILE per set ({'A and B' if args.b else 'A'}), "
                             f"got {len(args.save_stats)}")
        if len(args.save_activations) > (2 if args.b else 1):
            raise InputError(f"--save-activations takes one FILE per set ({'A and B' if args.b else 'A'}), "
                             f"got {len(args.save_activations)}")
        if args.trials is not None and args.trials < 1:
            raise InputError(f"--trials must be 1 or more, got {args.trials}")
        # a Slurm array's task picks the shard only for a one-set activations job (a comparison inside one is whole)
        from_env = shard_from_env() if args.b is None and args.save_activations else None
        shard = parse_shard(args.shard) if args.shard else from_env or (1, 1)
        if shard != (1, 1) and (args.b or not args.save_activations):
            raise InputError(f"--shard {shard[0]}/{shard[1]} computes one set's activations: give one set A and "
                             "--save-activations FILE (merge the shards' files later, comma-separated)")
        check_save_paths(args.save_stats)
        check_save_paths(args.save_activations, "--save-activations")
        if args.b is None and not args.save_stats and not args.save_activations:
            raise InputError("give two sets A B, or one set with --save-stats or --save-activations FILE")
        for path in args.save_stats:
            check_output(path, "--save-stats", args.overwrite)
        for path in args.save_activations:
            check_output(path, "--save-activations", args.overwrite)
        sampled = args.protocol != "tf"
        own = recipe(args.protocol)
        if sampled and args.save_stats:
            raise InputError(f"--save-stats: protocol {args.protocol} samples clips per trial; save its activations "
                             "with --save-activations instead")
        if sampled:
            seed = own.seed if args.seed is None else args.seed
        else:
            seed = args.seed if args.seed is not None or args.start is not None else 0
        protocol = Protocol(args.protocol, args.frames, args.clips_per_video, args.start, args.stride, seed, args.fps,
                            args.subsample, args.network or own.network)
        options = RunOptions(args.batch, args.workers, args.device, chosen_precision(args), args.compile,
                             args.max_videos, progress=not args.quiet)
        plain = not sampled and args.metrics == ("fvd",) and (args.trials or 1) == 1 and not args.save_activations \
            and not any(s.endswith(".pkl") or "," in s or is_activations_file(s) for s in (args.a, args.b or "")) \
            and shard == (1, 1)
        if plain:
            result = run_fvd(args.a, args.b, protocol, options, tuple(args.save_stats))
            if args.b is not None and result.videos_a is None and result.videos_b is None:
                check_unused_options(given_options(parser), protocol, result, args)
        else:
            if args.save_stats:
                raise InputError("--save-stats applies to a plain tf FVD; with --metrics, --trials, --shard or "
                                 "activations files save activations (--save-activations)")
            result = run_metrics(args.a, args.b, protocol, options, args.metrics, args.trials,
                                 tuple(args.save_activations), shard, args.allow_mixed_protocols)
    except (InputError, ValueError, WeightsUnavailable, OSError) as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: nothing half-written (statistics and activations files already saved are complete)", file=sys.stderr)
        return 130
    if isinstance(result, list):  # activations only
        for data, path in zip(result, args.save_activations):
            if args.json:
                print(json.dumps({"saved": path, "clips": len(data.clip_index), "of": data.total,
                                  "shard": f"{data.shard[0]}/{data.shard[1]}", "protocol": data.protocol.name,
                                  "network": data.protocol.network}))
            else:
                print(f"saved the activations of {len(data.clip_index)} of {data.total} clips of {data.spec} to "
                      f"{path} (shard {data.shard[0]}/{data.shard[1]}, protocol {data.protocol.describe()})")
        return 0
    if isinstance(result, MetricsResult):
        if args.json:
            print(json.dumps(result.as_dict()))
        else:
            print("  ".join(f"{name.upper() if name in ('fvd', 'kvd') else name} {value:.4f}"
                            + (f" ± {result.metrics[name + '_std']:.4f}" if name + "_std" in result.metrics else "")
                            for name, value in result.metrics.items() if not name.endswith("_std"))
                  + f"  (A: {result.n_a} clips, B: {result.n_b} clips; {len(result.seeds)} trial(s); protocol "
                  f"{result.protocol.describe()}; {result.path})")
        return 0
    if args.b is None:
        if args.json:
            protocol = result.protocol.as_dict()
            print(json.dumps({"n_a": result.n, "saved": args.save_stats[0], "frames": protocol.pop("frames"),
                              "protocol": protocol.pop("name"), **protocol}))
        else:
            print(f"saved the statistics of {result.n} clips of {args.a} to {args.save_stats[0]} "
                  f"(protocol {result.protocol.describe()})")
        return 0
    if args.json:
        print(json.dumps(result.as_dict()))
    else:
        print(f"FVD {result.fvd:.4f}  (A: {result.a.n} clips, B: {result.b.n} clips; "
              f"protocol {result.a.protocol.describe()}; {result.path})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
