"""Fine-tuning I3D with the first K of its 20 blocks frozen: one readable loop, as in nanoGPT.

A run folder holds config.json, classes.txt, best.safetensors, last.pt (everything needed to
resume), metrics.json / metrics.csv, curves.png and confusion_matrix.png.
"""
from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import os
import random
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, WeightedRandomSampler
from tqdm import tqdm

from src.dataset import ClipDataset, balanced_weights, collate, read_classes, scan_split, streams
from src.device import pick_device
from src.features import FeatureCache
from src.model import BLOCK_NAMES, ENDPOINTS, I3D
from src.weights import WeightsUnavailable, i3d, save_state_dict

log = logging.getLogger("train")
LOGITS_BLOCK = BLOCK_NAMES.index("conv3d_0c_1x1")


class TrainingError(RuntimeError):
    """A run that cannot start or go on; the message says why and what to do."""


@dataclass
class Config:
    """Everything that defines a run; saved as config.json and restored by --resume."""

    data: str = "data/videos/pre-processed"
    out: str | None = None
    weights: str = "rgb_scratch"
    flow_weights: str | None = None  # default: flow_scratch when obtainable, else cross-modality from --weights
    modality: str = "rgb"
    freeze: int = 15
    clip_len: int = 64
    crop: int = 224
    sample_rate: int | None = None
    batch_size: int = 8
    epochs: int = 10
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: str = "cosine"
    warmup_epochs: float = 1.0
    step_epochs: int = 5
    step_gamma: float = 0.1
    label_smoothing: float = 0.0
    dropout: float = 0.5
    bn_momentum: float = 0.1
    accum_steps: int = 1
    clip_grad: float = 0.0
    amp: bool = False
    precision: str = "auto"  # the frozen blocks' inference path (src.inference), or "plain"
    seed: int = 0
    device: str = "auto"
    workers: int = 0
    balanced: bool = False
    no_flip: bool = False
    cache_features: str = "auto"
    cache_views: int = 4
    cache_dtype: str = "float16"
    patience: int = 0
    classes: list[str] = field(default_factory=list)
    # how pre-process.py made the arrays (from its manifest), so prediction prepares inputs the same way
    input_size: int | None = None  # short side of the stored frames
    input_fps: float | None = 25.0  # None: the sources' own rate
    input_sample_rate: int = 1
    flow_algorithm: str = "tvl1"


# ---------------------------------------------------------------- the model: streams with frozen blocks

def freeze(model: I3D, k: int) -> None:
    """Stop gradients in the first k blocks; `train_mode` keeps their batch norm in eval mode."""
    for block in list(model.children())[:k]:
        for p in block.parameters():
            p.requires_grad_(False)


def train_mode(model: I3D, k: int) -> None:
    """model.train(), except the first k blocks, whose batch-norm statistics must never move."""
    model.train()
    for block in list(model.children())[:k]:
        block.eval()


def build_streams(cfg: Config, num_classes: int) -> nn.ModuleDict:
    """One I3D per stream ('rgb', 'flow'), pretrained, with a new classifier and the first K blocks frozen."""
    models = nn.ModuleDict()
    for stream in streams(cfg.modality):
        if stream == "rgb":
            model = i3d(cfg.weights, num_classes=num_classes, in_channels=3, dropout=cfg.dropout)
        else:
            model = None
            candidates = [cfg.flow_weights] if cfg.flow_weights else ["flow_scratch", "flow_imagenet"]
            for name in candidates:
                try:
                    model = i3d(name, num_classes=num_classes, in_channels=2, dropout=cfg.dropout)
                    break
                except (WeightsUnavailable, FileNotFoundError) as exc:
                    if cfg.flow_weights:
                        raise
                    log.info("flow weights %s unavailable (%s)", name, str(exc).splitlines()[0])
            if model is None:
                log.info("no flow checkpoint: initialising the flow stream from %s by cross-modality averaging "
                         "of the first convolution over its colour channels", cfg.weights)
                model = i3d(cfg.weights, num_classes=num_classes, in_channels=2, dropout=cfg.dropout)
        freeze(model, cfg.freeze)
        for module in model.modules():
            if isinstance(module, nn.BatchNorm3d):
                # Few steps on a small dataset: running statistics must follow the new data quickly,
                # or evaluation (running stats) disagrees with training (batch stats).
                module.momentum = cfg.bn_momentum
        models[stream] = model
    return models


class FrozenPart:
    """The first k blocks of one stream, run without gradients, on the fast inference path unless 'plain'.

    Frozen blocks never change (weights, and batch norm in eval mode), so the fast path (batch norm
    folded, channels-last, bf16 where the hardware makes it faster) is built once for the whole run.
    """

    def __init__(self, model: I3D, k: int, device: torch.device, precision: str):
        self.model, self.k, self.fast = model, k, None
        if precision != "plain" and 0 < k <= len(ENDPOINTS):
            from src.inference import optimize_for_inference
            self.fast = optimize_for_inference(model, device, precision)
        self.precision = self.fast.path.precision if self.fast else "plain"  # as resolved, for the cache
        self.path = str(self.fast.path) if self.fast else "plain model"

    def __call__(self, clips: torch.Tensor) -> torch.Tensor:
        if self.fast is not None:
            return self.fast.forward_features(clips, ENDPOINTS[self.k - 1]).contiguous()
        with torch.no_grad():
            return self.model.forward_blocks(clips, 0, self.k)


def frozen_features(frozen: dict[str, FrozenPart], inputs: list, device: torch.device, cache: FeatureCache | None,
                    split: str, indices: list[int], views: list[int]) -> list[torch.Tensor]:
    """Per stream, the batch's output of the frozen blocks: read from the cache or computed (and cached)."""
    batches = []
    for s, (stream, run_frozen) in enumerate(frozen.items()):
        features = [sample[s][1] if sample[s][0] == "features" else None for sample in inputs]
        raw = [i for i, f in enumerate(features) if f is None]
        if raw:
            computed = run_frozen(torch.stack([inputs[i][s][1] for i in raw]).to(device))
            for j, i in enumerate(raw):
                features[i] = computed[j]
                if cache is not None:
                    cache.put(split, stream, indices[i], views[i], computed[j])
        batches.append(torch.stack([f.to(device) for f in features]))
    return batches


class Tail(nn.Module):
    """The trainable blocks K..20 of every stream; the streams' logits are summed (late fusion)."""

    def __init__(self, models: nn.ModuleDict, k: int):
        super().__init__()
        self.models, self.k = models, k

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return sum(model.forward_blocks(f, self.k) for model, f in zip(self.models.values(), features))


# ---------------------------------------------------------------- schedule, metrics, plots

def lr_factor(cfg: Config, step: int, steps_per_epoch: int) -> float:
    """Learning-rate multiplier at an optimizer step: linear warm-up, then cosine or step decay."""
    epoch = step / max(steps_per_epoch, 1)
    if epoch < cfg.warmup_epochs:
        return (epoch + 1 / max(steps_per_epoch, 1)) / cfg.warmup_epochs
    if cfg.schedule == "step":
        return cfg.step_gamma ** int(epoch // cfg.step_epochs)
    progress = (epoch - cfg.warmup_epochs) / max(cfg.epochs - cfg.warmup_epochs, 1e-8)
    return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


@dataclass
class EvalResult:
    """Validation metrics of one pass."""

    loss: float
    top1: float
    top5: float
    mean_class_acc: float
    per_class: list[float]
    confusion: np.ndarray
    scores: np.ndarray | None = None


def summarize(scores: torch.Tensor, labels: torch.Tensor, num_classes: int, loss_sum: float) -> EvalResult:
    """Metrics from per-item class scores (logits or probabilities) and labels."""
    n = max(len(labels), 1)
    pred = scores.argmax(1)
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (labels.numpy(), pred.numpy()), 1)
    top5 = scores.topk(min(5, num_classes), dim=1).indices.eq(labels[:, None]).any(1).float().sum().item()
    totals = confusion.sum(1)
    per_class = [float(confusion[c, c] / totals[c]) if totals[c] else float("nan") for c in range(num_classes)]
    present = [a for a in per_class if not math.isnan(a)]
    return EvalResult(loss_sum / n, float((pred == labels).float().sum()) / n, top5 / n,
                      float(np.mean(present)) if present else 0.0, per_class, confusion, scores.numpy())


def evaluate(models: nn.ModuleDict, frozen: dict[str, FrozenPart], loader: DataLoader, cfg: Config,
             device: torch.device, cache: FeatureCache | None, num_classes: int) -> EvalResult:
    """Loss and accuracy on the validation split (centre views), reduced over DDP ranks."""
    models.eval()
    scores, labels, loss_sum = [], [], 0.0
    with torch.no_grad(), autocast(cfg, device):
        for indices, views, inputs, y in loader:
            features = frozen_features(frozen, inputs, device, cache, "val", indices, views)
            logits = Tail(models, cfg.freeze)(features).float().cpu()
            loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
            scores.append(logits)
            labels.append(y)
    scores_t = torch.cat(scores) if scores else torch.zeros(0, num_classes)
    labels_t = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long)
    if dist.is_initialized():
        scores_t, labels_t, loss_sum = gather(scores_t, labels_t, loss_sum)
    return summarize(scores_t, labels_t, num_classes, loss_sum)


def gather(scores: torch.Tensor, labels: torch.Tensor, loss_sum: float) -> tuple[torch.Tensor, torch.Tensor, float]:
    """All ranks' scores and labels, and the summed loss."""
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, (scores, labels, loss_sum))
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]), sum(p[2] for p in parts)


def autocast(cfg: Config, device: torch.device):
    """bf16 autocast on CPU (fp16 on CUDA) when --amp, else a no-op context."""
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype, enabled=cfg.amp)


def save_plots(run_dir: Path, history: list[dict], confusion: np.ndarray, classes: list[str]) -> None:
    """curves.png (loss and top-1 per epoch) and confusion_matrix.png."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    ax_loss.plot(epochs, [h["val_loss"] for h in history], "o-", label="val")
    ax_acc.plot(epochs, [h["train_top1"] for h in history], "o-", label="train")
    ax_acc.plot(epochs, [h["val_top1"] for h in history], "o-", label="val")
    for ax, title in ((ax_loss, "loss"), (ax_acc, "top-1 accuracy")):
        ax.set_xlabel("epoch"), ax.set_title(title), ax.legend(), ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(run_dir / "curves.png", dpi=100)
    plt.close(fig)
    plot_confusion(confusion, classes, run_dir / "confusion_matrix.png")


def plot_confusion(confusion: np.ndarray, classes: list[str], path: Path) -> None:
    """A labelled confusion-matrix heat map (rows: true class, columns: predicted)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = max(4.0, 0.5 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(confusion, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=90), ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted"), ax.set_ylabel("true")
    for (i, j), v in np.ndenumerate(confusion):
        ax.text(j, i, str(v), ha="center", va="center", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_metrics(run_dir: Path, history: list[dict], best: dict) -> None:
    """metrics.json ({"best", "history"}) and metrics.csv, each written atomically."""
    tmp = run_dir / "metrics.json.part"
    tmp.write_text(json.dumps({"best": best, "history": history}, indent=2))
    os.replace(tmp, run_dir / "metrics.json")
    tmp = run_dir / "metrics.csv.part"
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)
    os.replace(tmp, run_dir / "metrics.csv")


def rng_state() -> dict:
    """Every random generator's state, as tensors and numbers, for an exact resume."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {"torch": torch.get_rng_state(), "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss,
                                                      gauss],
            "python": [version, list(internal), gauss_next],
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict) -> None:
    """Restore what `rng_state` saved."""
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    """Same seed, same run (on the same machine)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def stream_state_dict(models: nn.ModuleDict) -> dict[str, torch.Tensor]:
    """One stream: its state dict in this repository's naming; joint: keys prefixed 'rgb.' / 'flow.'."""
    if len(models) == 1:
        return next(iter(models.values())).state_dict()
    return models.state_dict()


# ---------------------------------------------------------------- the run

def setup_distributed() -> tuple[int, int]:
    """(rank, world size); joins the process group when launched by torchrun."""
    if "RANK" not in os.environ or dist.is_initialized():
        return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend)
    return dist.get_rank(), dist.get_world_size()


def new_run_dir(cfg: Config) -> Path:
    """The --out folder (which must not hold another run), or runs/<date>-<modality>."""
    if cfg.out:
        run_dir = Path(cfg.out)
        if (run_dir / "config.json").exists():
            raise TrainingError(f"{run_dir} already holds a run; use --resume {run_dir} to continue it, "
                                "--overwrite to replace it, or another --out")
        return run_dir
    return Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{cfg.modality}"


def record_recipe(cfg: Config, data: Path, example: Path) -> None:
    """Fill cfg's input_* fields and flow_algorithm from pre-process.py's manifest (or the arrays themselves).

    A column counts only where every row agrees; otherwise the array's short side, the sample rate in
    its file name (`rgb-SampleRate_<n>.npy`) and the official 25 fps / TV-L1 stand.
    """
    rows: list[dict[str, str]] = []
    for manifest in sorted(data.glob("manifest*.csv")):
        with open(manifest, newline="") as f:
            rows += list(csv.DictReader(f))

    def agreed(column: str, skip: tuple[str, ...] = ()) -> str | None:
        values = {row.get(column) for row in rows} - {None, *skip}
        return values.pop() if len(values) == 1 else None

    size = agreed("size", ("",))
    cfg.input_size = int(size) if size else int(min(np.load(example, mmap_mode="r", allow_pickle=False).shape[1:3]))
    fps = agreed("fps")  # "" is pre-process.py's native rate (--fps 0)
    if fps is not None:
        cfg.input_fps = float(fps) if fps else None
    rate = re.search(r"SampleRate_(\d+)", example.name)
    cfg.input_sample_rate = int(rate.group(1)) if rate else 1
    cfg.flow_algorithm = agreed("flow_algorithm", ("", "none")) or "tvl1"


def use_cache(cfg: Config) -> bool:
    """Whether frozen features are cached: 'auto' caches whenever blocks are frozen."""
    if cfg.cache_features == "off" or cfg.freeze == 0:
        return False
    return True


def train(cfg: Config, resume: str | None = None, overwrite: bool = False) -> Path:
    """Fine-tune, evaluate every epoch, checkpoint and plot; returns the run folder."""
    rank, world = setup_distributed()
    master = rank == 0
    if resume:
        run_dir = Path(resume)
        if not (run_dir / "last.pt").exists():
            raise TrainingError(f"{run_dir}: no last.pt to resume from")
        cfg = Config(**json.loads((run_dir / "config.json").read_text()))
    else:
        if overwrite and cfg.out and Path(cfg.out).exists() and master:
            for name in ("config.json", "last.pt", "best.safetensors", "metrics.json", "metrics.csv"):
                (Path(cfg.out) / name).unlink(missing_ok=True)
        run_dir = new_run_dir(cfg)
    if not 0 <= cfg.freeze <= LOGITS_BLOCK:
        raise TrainingError(f"--freeze {cfg.freeze}: choose 0..{LOGITS_BLOCK} (block {LOGITS_BLOCK + 1} is the "
                            "classifier, which must train)")
    device = pick_device(None if cfg.device == "auto" else cfg.device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    seed_everything(cfg.seed + rank)

    data = Path(cfg.data)
    classes = read_classes(data)
    train_items = scan_split(data, "train", classes, cfg.modality, cfg.sample_rate)
    val_items = scan_split(data, "val", classes, cfg.modality, cfg.sample_rate)
    missing_val = sorted({classes[i] for i in range(len(classes))} - {classes[it.label] for it in val_items})
    if missing_val and master:
        log.warning("val has no items of %s: their accuracy cannot be measured", missing_val)
    cfg.classes = classes
    record_recipe(cfg, data, train_items[0].files[streams(cfg.modality)[0]])
    if master:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
        (run_dir / "classes.txt").write_text("\n".join(classes) + "\n")
        handler = logging.FileHandler(run_dir / "train.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        log.addHandler(handler)
    log.info("run folder %s; %d classes, %d train / %d val items; device %s, %d process(es)",
             run_dir, len(classes), len(train_items), len(val_items), device, world)

    models = build_streams(cfg, len(classes)).to(device)
    frozen = {stream: FrozenPart(model, cfg.freeze, device, cfg.precision) for stream, model in models.items()}
    first = next(iter(frozen.values()))
    log.info("frozen blocks: %s", first.path)
    cache = None
    if use_cache(cfg):
        fingerprint = {"weights": cfg.weights, "flow_weights": cfg.flow_weights, "freeze": cfg.freeze,
                       "frozen_precision": first.precision, "clip_len": cfg.clip_len, "crop": cfg.crop,
                       "data": str(data.resolve()), "modality": cfg.modality, "sample_rate": cfg.sample_rate, "views": cfg.cache_views,
                       "seed": cfg.seed, "items": len(train_items) + len(val_items), "flip": not cfg.no_flip}
        cache = FeatureCache(run_dir / "cache", fingerprint, cfg.cache_dtype) if master else None
        if world > 1:
            dist.barrier()
            cache = cache or FeatureCache(run_dir / "cache", fingerprint, cfg.cache_dtype)
        log.info("caching the output of the %d frozen blocks in %s (%d fixed views per training item); "
                 "from epoch %d on, epochs run only the last %d blocks", cfg.freeze, run_dir / "cache",
                 cfg.cache_views, cfg.cache_views + 1, len(BLOCK_NAMES) - cfg.freeze)
    views = cfg.cache_views if cache is not None else None
    train_set = ClipDataset(train_items, cfg.modality, cfg.clip_len, cfg.crop, True, views, cfg.seed, cache, "train",
                            flip=not cfg.no_flip)
    val_set = ClipDataset(val_items, cfg.modality, cfg.clip_len, cfg.crop, False, None, cfg.seed, cache, "val")
    generator = torch.Generator().manual_seed(cfg.seed)
    if world > 1:
        sampler = DistributedSampler(train_set, world, rank, shuffle=True, seed=cfg.seed)
        val_sampler = DistributedSampler(val_set, world, rank, shuffle=False)
    else:
        sampler = WeightedRandomSampler(balanced_weights(train_items, len(classes)), len(train_items),
                                        generator=generator) if cfg.balanced else None
        val_sampler = None
    train_loader = DataLoader(train_set, cfg.batch_size, shuffle=sampler is None, sampler=sampler,
                              num_workers=cfg.workers, collate_fn=collate, generator=generator)
    val_loader = DataLoader(val_set, cfg.batch_size, sampler=val_sampler, num_workers=cfg.workers,
                            collate_fn=collate)

    trainable = [p for p in models.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        optimizer = torch.optim.SGD(trainable, cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    else:
        optimizer = torch.optim.AdamW(trainable, cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(train_loader) / cfg.accum_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(cfg, s, steps_per_epoch))
    tail = Tail(models, cfg.freeze)
    net = nn.parallel.DistributedDataParallel(tail) if world > 1 else tail  # averages the tail's gradients
    scaler = torch.amp.GradScaler(enabled=cfg.amp and device.type == "cuda")
    writer = tensorboard_writer(run_dir) if master else None

    start_epoch, history, best = 0, [], {"epoch": None, "val_top1": -1.0, "val_loss": float("inf")}
    if resume:
        state = torch.load(run_dir / "last.pt", map_location="cpu", weights_only=True)
        models.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, history, best = state["epoch"] + 1, state["history"], state["best"]
        set_rng_state(state["rng"])
        log.info("resumed %s after epoch %d", run_dir, state["epoch"] + 1)
    bad_epochs = 0
    for epoch in range(start_epoch, cfg.epochs):
        started = time.time()
        train_set.set_epoch(epoch)
        generator.manual_seed(cfg.seed + epoch)  # the epoch's shuffle depends on nothing else: exact resume
        if world > 1:
            sampler.set_epoch(epoch)
        for model in models.values():
            train_mode(model, cfg.freeze)
        loss_sum, correct, seen = 0.0, 0, 0
        optimizer.zero_grad(set_to_none=True)
        bar = tqdm(train_loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not master, leave=False)
        for step, (indices, views_, inputs, y) in enumerate(bar):
            y = y.to(device)
            last_micro_step = (step + 1) % cfg.accum_steps == 0 or step + 1 == len(train_loader)
            features = frozen_features(frozen, inputs, device, cache, "train", indices, views_)
            sync = contextlib.nullcontext() if last_micro_step or world == 1 else net.no_sync()
            with sync, autocast(cfg, device):
                logits = net(features).float()
                loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
                if not torch.isfinite(loss):
                    raise TrainingError(f"the loss became {loss.item()} at epoch {epoch + 1}, step {step + 1}; "
                                        f"{run_dir / 'last.pt'} keeps the last good epoch. Lower --lr, set "
                                        "--clip-grad, or check the data")
                scaler.scale(loss / cfg.accum_steps).backward()
            if last_micro_step:
                if cfg.clip_grad > 0:
                    scaler.unscale_(optimizer)
                    nn.utils.clip_grad_norm_(trainable, cfg.clip_grad)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
            loss_sum += loss.item() * len(y)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.3f}")
        totals = torch.tensor([loss_sum, correct, seen], dtype=torch.float64)
        if world > 1:
            dist.all_reduce(totals)
        result = evaluate(models, frozen, val_loader, cfg, device, cache, len(classes))
        row = {"epoch": epoch + 1, "train_loss": totals[0].item() / max(totals[2].item(), 1),
               "train_top1": totals[1].item() / max(totals[2].item(), 1), "val_loss": result.loss,
               "val_top1": result.top1, "lr": optimizer.param_groups[0]["lr"], "seconds": time.time() - started}
        history.append(row)
        improved = (result.top1, -result.loss) > (best["val_top1"], -best["val_loss"])
        if improved:
            best = {"epoch": epoch + 1, "val_top1": result.top1, "val_loss": result.loss}
            bad_epochs = 0
        else:
            bad_epochs += 1
        if master:
            log.info("epoch %d: train loss %.4f top-1 %.3f | val loss %.4f top-1 %.3f | lr %.2e | %.1f s",
                     epoch + 1, row["train_loss"], row["train_top1"], row["val_loss"], row["val_top1"], row["lr"],
                     row["seconds"])
            log.info("per-class val accuracy: %s", ", ".join(
                f"{c} {a:.2f}" for c, a in zip(classes, result.per_class) if not math.isnan(a)))
            if improved:
                save_state_dict(stream_state_dict(models), run_dir / "best.safetensors")
            torch.save({"model": models.state_dict(), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(), "epoch": epoch, "history": history, "best": best,
                        "rng": rng_state(), "config": asdict(cfg)}, run_dir / "last.pt.part")
            os.replace(run_dir / "last.pt.part", run_dir / "last.pt")
            write_metrics(run_dir, history, best)
            save_plots(run_dir, history, result.confusion, classes)
            if writer is not None:
                for key in ("train_loss", "train_top1", "val_loss", "val_top1", "lr"):
                    writer.add_scalar(key, row[key], epoch + 1)
                writer.flush()
        if cfg.patience and bad_epochs >= cfg.patience:
            log.info("early stop: no val improvement for %d epochs (best: epoch %d)", cfg.patience, best["epoch"])
            break
    if master:
        log.info("best epoch %s: val top-1 %.3f, loss %.4f; run folder %s", best["epoch"], best["val_top1"],
                 best["val_loss"], run_dir)
    return run_dir


def tensorboard_writer(run_dir: Path):
    """A TensorBoard SummaryWriter when tensorboard is installed, else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(run_dir / "tensorboard")


# ---------------------------------------------------------------- using a finished run

def load_run(run_dir: str | Path, device: torch.device | None = None) -> tuple[Config, nn.ModuleDict]:
    """A run's config and its best model streams (eval mode), from config.json and best.safetensors."""
    from safetensors.torch import load_file

    run_dir = Path(run_dir)
    for name in ("config.json", "best.safetensors"):
        if not (run_dir / name).exists():
            raise TrainingError(f"{run_dir}: no {name}; is this a train.py run folder (finished at least one epoch)?")
    cfg = Config(**json.loads((run_dir / "config.json").read_text()))
    state = load_file(run_dir / "best.safetensors")
    models = nn.ModuleDict({s: I3D(len(cfg.classes), 3 if s == "rgb" else 2, cfg.dropout) for s in streams(cfg.modality)})
    if len(models) == 1:
        next(iter(models.values())).load_state_dict(state)
    else:
        models.load_state_dict({k: v for k, v in state.items()}, strict=False)
    return cfg, models.to(device or torch.device("cpu")).eval()


def evaluate_run(run_dir: str | Path, data: str | None = None, split: str = "val", clips: int = 1, crops: int = 1,
                 device: torch.device | None = None, precision: str | None = "auto", compile: bool = False
                 ) -> tuple[EvalResult, list[str]]:
    """Multi-clip x multi-crop testing of a run's best model: softmax scores averaged over the views.

    `precision` picks the fast inference path (src.inference; None runs the plain model).
    """
    from src.predict import accelerate

    device = device or pick_device()
    cfg, plain = load_run(run_dir)
    models, path = accelerate(dict(plain.items()), device, precision, compile)
    log.info("inference: %s", path)
    data_dir = Path(data or cfg.data)
    classes = read_classes(data_dir)
    if classes != cfg.classes:
        raise TrainingError(f"{data_dir / 'classes.txt'} lists {classes}, but the run was trained on {cfg.classes}")
    items = scan_split(data_dir, split, classes, cfg.modality, cfg.sample_rate)
    if not items:
        raise TrainingError(f"{data_dir / split}: no items to evaluate")
    dataset = ClipDataset(items, cfg.modality, cfg.clip_len, cfg.crop, train=False)
    starts = [0.5] if clips == 1 else [i / (clips - 1) for i in range(clips)]
    corners = [(0.5, 0.5)] if crops == 1 else [(0.0, 0.0), (0.5, 0.5), (1.0, 1.0)]
    from src.dataset import View
    scores, labels, loss_sum = [], [], 0.0
    with torch.inference_mode():
        for item in tqdm(items, desc=f"evaluating {split}"):
            probs, logits_sum = 0, 0
            for start in starts:
                for top, left in corners:
                    view = View(start, top, left, False)
                    logits = sum(model(dataset.load(item, stream, view)[None].to(device))
                                 for stream, model in models.items()).float().cpu()[0]
                    probs = probs + logits.softmax(0)
                    logits_sum = logits_sum + logits
            n = len(starts) * len(corners)
            scores.append(probs / n)
            loss_sum += F.cross_entropy((logits_sum / n)[None], torch.tensor([item.label])).item()
            labels.append(item.label)
    return summarize(torch.stack(scores), torch.tensor(labels), len(classes), loss_sum), classes
