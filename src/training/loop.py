"""Fine-tuning I3D with the first K of its 20 blocks frozen: one readable loop, as in nanoGPT.

`train(cfg)` sets up the streams, data, feature cache and optimizer, then runs the loop: get a batch,
run the frozen blocks (or read their cached output), forward the trainable tail, loss, backward,
step; evaluate, log and checkpoint every epoch. The frozen and trainable parts of the streams are
src/training/frozen.py's concern; run folders (config, checkpoints, metrics, plots) src/training/runs.py's;
the set-up decisions (items, cache, loaders, --amp) src/training/setup.py's.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from src.dataset import ClipDataset, is_multi_label, streams
from src.device import pick_device
from src.inference import check_precision
from src.training.config import RunConfig, TrainingError, reverse_map
from src.training.frozen import FrozenPart, Tail, build_streams, frozen_features, train_mode
from src.training.frozen_cache import FrozenFeatureCache
from src.training.metrics import EvalResult, summarize, summarize_multilabel, top1_hits
from src.training.runs import (Interrupted, clear_run_dir, load_checkpoint, new_run_dir, record_recipe, save_checkpoint,
                               save_plots, set_rng_state, start_run_dir, stream_state_dict, tensorboard_writer,
                               write_metrics, write_thresholds)
from src.training.setup import amp_dtype, load_items, make_cache, make_loaders, seed_everything, setup_distributed
from src.weights import save_state_dict

log = logging.getLogger("train")


# ---------------------------------------------------------------- schedule and evaluation

def lr_factor(cfg: RunConfig, step: int, steps_per_epoch: int) -> float:
    """Learning-rate multiplier at an optimizer step: linear warm-up, then cosine or step decay."""
    epoch = step / max(steps_per_epoch, 1)
    if epoch < cfg.warmup_epochs:
        return (epoch + 1 / max(steps_per_epoch, 1)) / cfg.warmup_epochs
    if cfg.schedule == "step":
        return cfg.step_gamma ** int(epoch // cfg.step_epochs)
    progress = (epoch - cfg.warmup_epochs) / max(cfg.epochs - cfg.warmup_epochs, 1e-8)
    return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def loss_fn(cfg: RunConfig, logits: torch.Tensor, y: torch.Tensor, reduction: str = "mean",
            smoothing: float | None = None) -> torch.Tensor:
    """Cross-entropy on class indices, or (multi-label) binary cross-entropy per class on 0/1 label vectors.

    Multi-label smoothing moves the targets to s/2 and 1 - s/2. Reduction "sum" sums over items and,
    for multi-label, averages over classes, so that sum / items is the mean loss either way.
    """
    smoothing = cfg.label_smoothing if smoothing is None else smoothing
    if not cfg.multi_label:
        return F.cross_entropy(logits, y, reduction=reduction, label_smoothing=smoothing)
    target = y * (1 - smoothing) + smoothing / 2
    if reduction == "sum":
        return F.binary_cross_entropy_with_logits(logits, target, reduction="sum") / logits.shape[1]
    return F.binary_cross_entropy_with_logits(logits, target, reduction=reduction)


def evaluate(models: nn.ModuleDict, frozen: dict[str, FrozenPart], loader: DataLoader, cfg: RunConfig,
             device: torch.device, cache: FrozenFeatureCache | None, num_classes: int,
             amp: torch.dtype | None = None) -> EvalResult:
    """Loss and accuracy (multi-label: mAP, per-class AP, F1 thresholds) on the validation split (centre
    views), reduced over DDP ranks."""
    models.eval()
    scores, labels, loss_sum = [], [], 0.0
    with torch.no_grad(), autocast(amp, device):
        for indices, views, inputs, y in loader:
            features = frozen_features(frozen, inputs, device, cache, "val", indices, views)
            logits = Tail(models, cfg.freeze)(features).float().cpu()
            loss_sum += loss_fn(cfg, logits, y, "sum", smoothing=0.0).item()
            scores.append(logits)
            labels.append(y)
    scores_t = torch.cat(scores) if scores else torch.zeros(0, num_classes)
    empty = torch.zeros(0, num_classes) if cfg.multi_label else torch.zeros(0, dtype=torch.long)
    labels_t = torch.cat(labels) if labels else empty
    if dist.is_initialized():
        scores_t, labels_t, loss_sum = gather(scores_t, labels_t, loss_sum)
    if cfg.multi_label:
        return summarize_multilabel(scores_t.sigmoid(), labels_t, loss_sum)
    return summarize(scores_t, labels_t, num_classes, loss_sum)


def gather(scores: torch.Tensor, labels: torch.Tensor, loss_sum: float) -> tuple[torch.Tensor, torch.Tensor, float]:
    """All ranks' scores and labels, and the summed loss."""
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, (scores, labels, loss_sum))
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]), sum(p[2] for p in parts)


def autocast(amp: torch.dtype | None, device: torch.device):
    """Autocast to `amp` (from amp_dtype), or a no-op context when None."""
    return torch.autocast(device.type, dtype=amp or torch.bfloat16, enabled=amp is not None)


def make_optimizer(cfg: RunConfig, trainable: list[nn.Parameter], steps_per_epoch: int
                   ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """SGD with momentum or AdamW, and the warm-up + cosine/step schedule per optimizer step."""
    if cfg.optimizer == "sgd":
        optimizer = torch.optim.SGD(trainable, cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    else:
        optimizer = torch.optim.AdamW(trainable, cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(cfg, s, steps_per_epoch))
    return optimizer, scheduler


# ---------------------------------------------------------------- the run

def train(cfg: RunConfig, resume: str | None = None, overwrite: bool = False,
          resume_options: dict | None = None) -> Path:
    """Fine-tune, evaluate every epoch, checkpoint and plot; returns the run folder.

    `resume_options`: the options given with --resume, checked against the run's own (see RunConfig.resumed_with).

    Ctrl-C raises Interrupted (a KeyboardInterrupt) whose message says how to go on from the last epoch.
    """
    rank, world = setup_distributed()
    if resume:
        run_dir = Path(resume)
        cfg = RunConfig.load(run_dir)
        for note in cfg.resumed_with(resume_options or {}, run_dir):
            log.info("%s", note)
        state = load_checkpoint(run_dir)
    else:
        cfg.check()
        run_dir, state = new_run_dir(cfg, overwrite), None
    try:
        return fit(cfg, run_dir, state, rank, world)
    except KeyboardInterrupt:
        raise Interrupted(run_dir) from None


def fit(cfg: RunConfig, run_dir: Path, state: dict | None, rank: int, world: int) -> Path:
    """The run itself: set-up, then per epoch train, evaluate, checkpoint and plot (`state`: last.pt to resume)."""
    master = rank == 0
    device = pick_device(None if cfg.device == "auto" else cfg.device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    try:
        check_precision(None if cfg.precision == "plain" else cfg.precision, device)
    except ValueError as exc:
        raise TrainingError(str(exc)) from None
    amp, amp_note = amp_dtype(cfg, device)
    if amp_note and master:
        log.info("%s", amp_note)
    seed_everything(cfg.seed + rank)

    classes, train_items, val_items = load_items(cfg, master)
    if not cfg.multi_label and is_multi_label(train_items + val_items):
        cfg.multi_label = True
        if master:
            log.info("some items have several labels (labels.txt): multi-label training "
                     "(sigmoid outputs, binary cross-entropy, mAP)")
    if cfg.reverse_pairs and cfg.multi_label:
        raise TrainingError("--reverse-pairs: not for multi-label data (a clip played backwards would keep labels "
                            "that may not hold backwards); leave it out, or train single-label")
    reverse_to = reverse_map(cfg.reverse_pairs, classes)
    if not val_items:
        if cfg.multi_label:
            raise TrainingError(f"{Path(cfg.data) / 'val'}: no items; a multi-label run chooses its thresholds on "
                                "the val split (pre-process.py --val-ratio makes one)")
        if master:
            log.warning("%s: no val split, so nothing is measured on held-out items and the best model is the last "
                        "epoch's (pre-process.py --val-ratio makes one)", Path(cfg.data) / "val")
    missing_val = sorted(set(classes) - {classes[i] for it in val_items for i in it.label_set()})
    if missing_val and val_items and master:
        log.warning("val has no items of %s: their accuracy cannot be measured", missing_val)
    cfg.classes = classes
    record_recipe(cfg, Path(cfg.data), train_items[0].files[streams(cfg.modality)[0]])
    if master:
        if state is None:
            clear_run_dir(run_dir)  # what a run that never finished an epoch (or --overwrite) left there
            start_run_dir(run_dir, cfg)
        handler = logging.FileHandler(run_dir / "train.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        log.addHandler(handler)
    log.info("run folder %s; %d classes, %d train / %d val items; device %s, %d process(es)",
             run_dir, len(classes), len(train_items), len(val_items), device, world)

    models = build_streams(cfg, len(classes)).to(device)
    frozen = {stream: FrozenPart(model, cfg.freeze, device, cfg.precision) for stream, model in models.items()}
    first = next(iter(frozen.values()))
    log.info("frozen blocks: %s", first.path)
    cache = make_cache(cfg, run_dir, first, len(train_items) + len(val_items), master, world)
    views = cfg.cache_views if cache is not None else None
    vectors = len(classes) if cfg.multi_label else None  # multi-label: labels come as 0/1 vectors
    train_set = ClipDataset(train_items, cfg.modality, cfg.clip_len, cfg.crop, True, views, cfg.seed, cache, "train",
                            flip=not cfg.no_flip, multi_label_classes=vectors, reverse_to=reverse_to)
    val_set = ClipDataset(val_items, cfg.modality, cfg.clip_len, cfg.crop, False, None, cfg.seed, cache, "val",
                          multi_label_classes=vectors)
    train_loader, val_loader, generator = make_loaders(cfg, train_set, val_set, len(classes), rank, world)
    trainable = [p for p in models.parameters() if p.requires_grad]
    optimizer, scheduler = make_optimizer(cfg, trainable, math.ceil(len(train_loader) / cfg.accum_steps))
    tail = Tail(models, cfg.freeze)
    net = nn.parallel.DistributedDataParallel(tail) if world > 1 else tail  # averages the tail's gradients
    scaler = torch.amp.GradScaler(enabled=amp == torch.float16)
    writer = tensorboard_writer(run_dir) if master else None

    key = "val_map" if cfg.multi_label else "val_top1"  # what the best epoch is chosen by
    start_epoch, history, best, bad_epochs = 0, [], {"epoch": None, key: -1.0, "val_loss": float("inf")}, 0
    if state is not None:
        models.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state.get("scaler", {}))
        start_epoch, history, best = state["epoch"] + 1, state["history"], state["best"]
        bad_epochs = state.get("bad_epochs", 0)
        set_rng_state(state["rng"])  # last: building the model above drew from the generators too
        log.info("resumed %s after epoch %d", run_dir, state["epoch"] + 1)
    for epoch in range(start_epoch, cfg.epochs):
        started = time.time()
        train_set.set_epoch(epoch)
        generator.manual_seed(cfg.seed + epoch)  # the epoch's draws depend on nothing else: exact resume
        if isinstance(train_loader.sampler, DistributedSampler):
            train_loader.sampler.set_epoch(epoch)
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
            with sync, autocast(amp, device):
                logits = net(features).float()
                loss = loss_fn(cfg, logits, y)
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
            correct += top1_hits(logits.detach(), y)
            seen += len(y)
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.3f}")
        totals = torch.tensor([loss_sum, correct, seen], dtype=torch.float64)
        if world > 1:
            dist.all_reduce(totals)
        result = evaluate(models, frozen, val_loader, cfg, device, cache, len(classes), amp)
        measured = bool(val_items)  # without a val split the val fields are None and the last epoch is the best
        row = {"epoch": epoch + 1, "train_loss": totals[0].item() / max(totals[2].item(), 1),
               "train_top1": totals[1].item() / max(totals[2].item(), 1),
               "val_loss": result.loss if measured else None, "val_top1": result.top1 if measured else None,
               **({"val_map": result.map} if cfg.multi_label else {}),
               "lr": optimizer.param_groups[0]["lr"], "seconds": time.time() - started}
        history.append(row)
        improved = not measured or (row[key], -result.loss) > (best[key], -best["val_loss"])
        if improved:
            best = {"epoch": epoch + 1, key: row[key], "val_loss": row["val_loss"]}
            if cfg.multi_label:
                best.update(val_top1=result.top1, val_f1=result.f1, val_ap=dict(zip(classes, result.per_class_ap)),
                            thresholds=dict(zip(classes, result.thresholds)))
        bad_epochs = 0 if improved else bad_epochs + 1
        if master:
            val = (f"val loss {result.loss:.4f} top-1 {result.top1:.3f}"
                   + (f" mAP {result.map:.3f}" if cfg.multi_label else "") if measured else "no val split")
            log.info("epoch %d: train loss %.4f top-1 %.3f | %s | lr %.2e | %.1f s",
                     epoch + 1, row["train_loss"], row["train_top1"], val, row["lr"], row["seconds"])
            if measured:
                log.info("per-class val %s: %s", "AP" if cfg.multi_label else "accuracy", ", ".join(
                    f"{c} {a:.2f}" for c, a in zip(classes, result.per_class) if not math.isnan(a)))
            if improved:
                save_state_dict(stream_state_dict(models), run_dir / "best.safetensors")
                if cfg.multi_label:
                    write_thresholds(run_dir, classes, result.thresholds, epoch + 1)
            save_checkpoint(run_dir, {"model": models.state_dict(), "optimizer": optimizer.state_dict(),
                                      "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                                      "epoch": epoch, "history": history, "best": best, "bad_epochs": bad_epochs,
                                      "config": asdict(cfg)})
            write_metrics(run_dir, history, best)
            save_plots(run_dir, history, result.confusion, classes,
                       list(best["val_ap"].values()) if cfg.multi_label else None)
            if writer is not None:
                for name in ("train_loss", "train_top1", "val_loss", "val_top1", "val_map", "lr"):
                    if name in row:
                        writer.add_scalar(name, row[name], epoch + 1)
                writer.flush()
        if cfg.patience and bad_epochs >= cfg.patience:
            log.info("early stop: no val improvement for %d epochs (best: epoch %d)", cfg.patience, best["epoch"])
            break
    if master and best["val_loss"] is None:
        log.info("kept the last epoch (%s; no val split); run folder %s", best["epoch"], run_dir)
    elif master:
        log.info("best epoch %s: val %s %.3f, loss %.4f; run folder %s", best["epoch"],
                 "mAP" if cfg.multi_label else "top-1", best[key], best["val_loss"], run_dir)
    return run_dir
