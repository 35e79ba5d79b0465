"""Fine-tune Kinetics-pretrained I3D on your own pre-processed videos, the first 15 of 20 blocks frozen.

Examples:
    python train.py                                              # data/videos/pre-processed -> runs/<date>-rgb
    python train.py --data data/videos/pre-processed --epochs 20 --lr 0.01 --batch-size 8
    python train.py --modality joint --freeze 15 --cache-views 4 # RGB + flow streams, logits summed
    python train.py --resume runs/20261125-101500-rgb             # continue exactly where it stopped
    torchrun --nproc_per_node 2 train.py --data ...              # DistributedDataParallel (gloo on CPU)
    python train.py --data segments-pre --multi-label --no-flip  # several labels per item (labels.txt)
    python train.py --no-flip --reverse-pairs pan_left:pan_right # backwards pan_left clips train as pan_right

With K blocks frozen their output never changes, so it is cached (RUN/cache) and, once every view
is cached (after --cache-views epochs), an epoch runs only the last 20-K blocks: many times faster.
"""
from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import fields

from src.cli import Parser
from src.dataset import DatasetError, error_text
from src.training.config import CHOICES, RunConfig, TrainingError
from src.training.loop import train
from src.training.runs import Interrupted
from src.weights import WeightsUnavailable

HELP = {
    "data": "pre-processed dataset (classes.txt, train/, val/)", "out": "run folder (default: runs/<date>-<modality>)",
    "weights": "RGB weights: registry name or file", "flow_weights": "flow weights (default: flow_scratch if "
    "obtainable, else cross-modality initialisation from --weights)", "modality": "rgb, flow or joint",
    "freeze": "freeze the first K of the 20 blocks (their batch norm stays in eval mode)",
    "clip_len": "frames per training clip (shorter items loop)", "crop": "spatial crop size",
    "sample_rate": "use the arrays of this --sample-rate (default: the only/lowest one)",
    "batch_size": "clips per step", "epochs": "epochs to train", "optimizer": "sgd (momentum) or adamw",
    "lr": "peak learning rate", "momentum": "SGD momentum", "weight_decay": "weight decay",
    "schedule": "cosine or step decay after warm-up", "warmup_epochs": "linear warm-up length in epochs",
    "step_epochs": "step schedule: decay every N epochs", "step_gamma": "step schedule: decay factor",
    "label_smoothing": "cross-entropy label smoothing", "dropout": "dropout before the classifier",
    "bn_momentum": "batch-norm running-statistics momentum of the trainable blocks",
    "accum_steps": "accumulate gradients over N batches", "clip_grad": "clip the gradient norm (0: off)",
    "amp": "mixed precision: bf16 on CPU, fp16 on CUDA",
    "precision": "the frozen blocks' inference path: auto (bf16/fp16 where faster), fp32, bf16, fp16, or plain",
    "seed": "random seed (same seed, same run)",
    "device": "auto, cpu, cuda, cuda:1, mps", "workers": "data-loading processes",
    "balanced": "class-balanced sampling for unbalanced folders",
    "no_flip": "no horizontal flips (when classes depend on left/right direction)",
    "cache_features": "cache the frozen blocks' output: auto (whenever blocks are frozen), on or off",
    "cache_views": "fixed augmented views per training item when caching", "cache_dtype": "float16 or float32",
    "patience": "early stopping: epochs without val improvement (0: off)",
    "reverse_pairs": "direction-sensitive class pairs a:b,c:d: a training clip of a is played backwards with "
                     "probability 0.5 and labelled b, and b becomes a (flow reversed in time and negated); "
                     "a:a reverses a keeping its label",
    "skip_bad_items": "leave out items whose arrays hold NaN or infinite values (each named once) instead of stopping "
                      "with an error naming the file; reads every float array once at the start",
    "multi_label": "several labels per item: sigmoid outputs, binary cross-entropy, mAP, per-class thresholds "
                   "chosen on val (automatic when some item has several labels)",
}
RECORDED = ("classes", "input_size", "input_fps", "input_sample_rate", "flow_algorithm")  # from the dataset, not options


def add_run_options(parser: argparse.ArgumentParser, defaults: RunConfig | None) -> None:
    """One option per RunConfig field; with `defaults` None every default is None (to see which were given)."""
    for f in fields(RunConfig):
        if f.name in RECORDED:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults or RunConfig(), f.name)
        if isinstance(default, bool):
            parser.add_argument(flag, action="store_true", help=HELP[f.name],
                                **({} if defaults else {"default": None}))
            continue
        kind = type(default) if default is not None else (int if f.name == "sample_rate" else str)
        parser.add_argument(flag, type=kind, default=default if defaults else None, choices=CHOICES.get(f.name),
                            help=f"{HELP[f.name]} (default: %(default)s)")


def given_options(argv: list[str]) -> dict[str, object]:
    """The run options written on the command line, with their values."""
    probe = argparse.ArgumentParser(add_help=False)
    add_run_options(probe, None)
    given, _ = probe.parse_known_args(argv)
    return {name: value for name, value in vars(given).items() if value is not None}


def main() -> int:
    parser = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_options(parser, RunConfig())
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last.pt, with its own settings "
                        "(only --device and --workers may differ; other options given with it are refused)")
    parser.add_argument("--overwrite", action="store_true", help="replace the run in --out")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = RunConfig(**{f.name: getattr(args, f.name) for f in fields(RunConfig) if f.name not in RECORDED})
    try:
        train(cfg, resume=args.resume, overwrite=args.overwrite,
              resume_options=given_options(sys.argv[1:]) if args.resume else None)
    except (TrainingError, DatasetError, WeightsUnavailable) as exc:
        print(f"error: {error_text(exc)}", file=sys.stderr)
        return 1
    except Interrupted as exc:
        print(exc, file=sys.stderr)
        return 130
    except KeyboardInterrupt:  # while the run was being set up
        again = f"python train.py --resume {args.resume}" if args.resume else "the same command"
        print(f"interrupted before training started; nothing was lost: run {again} to start it", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
