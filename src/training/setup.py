"""Setting up a run: processes, seeds, the dataset's items, the feature cache, data loaders, the optimizer, and
what --amp runs in. Each decides once, from the config, what the loop (src/training/loop.py) then reads."""
from __future__ import annotations

import logging
import os
import random
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler, WeightedRandomSampler

from src.dataset import (ClipDataset, DatasetError, Item, balanced_weights, collate, drop_nonfinite_items, read_classes,
                         scan_split)
from src.inference import cpu_has_bf16
from src.model import BLOCK_NAMES
from src.training.config import RunConfig
from src.training.frozen import FrozenPart
from src.training.frozen_cache import FrozenFeatureCache

log = logging.getLogger("train")


def seed_everything(seed: int) -> None:
    """Same seed, same run (on the same machine)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def setup_distributed() -> tuple[int, int]:
    """(rank, world size); joins the process group when launched by torchrun."""
    if "RANK" not in os.environ or dist.is_initialized():
        return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend)
    return dist.get_rank(), dist.get_world_size()


def load_items(cfg: RunConfig, master: bool = True) -> tuple[list[str], list[Item], list[Item]]:
    """The dataset's classes and its train and val items, with clear errors for data that cannot train.

    With --skip-bad-items, items whose arrays hold NaN/inf are left out, each reported once (by rank 0).
    A missing or empty val split gives no val items (single-label runs then keep the last epoch as the best).
    """
    data = Path(cfg.data)
    classes = read_classes(data)
    if len(classes) < 2:
        raise DatasetError(f"{data / 'classes.txt'}: only one class ({classes[0]!r}); a classifier needs at least two")
    train_items = scan_split(data, "train", classes, cfg.modality, cfg.sample_rate)
    has_val = (data / "val").is_dir()  # no val split: training goes on, each epoch kept (fit warns)
    val_items = scan_split(data, "val", classes, cfg.modality, cfg.sample_rate) if has_val else []
    if cfg.skip_bad_items:
        (train_items, bad_train), (val_items, bad_val) = map(drop_nonfinite_items, (train_items, val_items))
        for line in bad_train + bad_val if master else []:
            log.warning("%s", line)
        empty = sorted(set(classes) - {classes[i] for it in train_items for i in it.label_set()})
        if empty:
            raise DatasetError(f"{data / 'train'}: no usable items of {empty} left once items with NaN/inf values "
                               "are left out")
    return classes, train_items, val_items


def use_cache(cfg: RunConfig) -> bool:
    """Whether frozen features are cached: 'auto' caches whenever blocks are frozen."""
    return cfg.cache_features != "off" and cfg.freeze > 0


def make_cache(cfg: RunConfig, run_dir: Path, first: FrozenPart, n_items: int, master: bool, world: int
               ) -> FrozenFeatureCache | None:
    """The run's frozen-feature cache, keyed by everything that determines its entries (None: no caching)."""
    if not use_cache(cfg):
        return None
    fingerprint = {"weights": cfg.weights, "flow_weights": cfg.flow_weights, "freeze": cfg.freeze,
                   "frozen_precision": first.precision, "clip_len": cfg.clip_len, "crop": cfg.crop,
                   "data": str(Path(cfg.data).resolve()), "modality": cfg.modality, "sample_rate": cfg.sample_rate,
                   "views": cfg.cache_views, "seed": cfg.seed, "items": n_items, "flip": not cfg.no_flip,
                   **({"reverse_pairs": cfg.reverse_pairs} if cfg.reverse_pairs else {})}  # earlier caches stay valid
    cache = FrozenFeatureCache(run_dir / "cache", fingerprint, cfg.cache_dtype) if master else None
    if world > 1:
        dist.barrier()  # rank 0 (re)made the folder and its fingerprint
        cache = cache or FrozenFeatureCache(run_dir / "cache", fingerprint, cfg.cache_dtype)
    log.info("caching the output of the %d frozen blocks in %s (%d fixed views per training item); "
             "from epoch %d on, epochs run only the last %d blocks", cfg.freeze, run_dir / "cache",
             cfg.cache_views, cfg.cache_views + 1, len(BLOCK_NAMES) - cfg.freeze)
    return cache


def make_loaders(cfg: RunConfig, train_set: ClipDataset, val_set: ClipDataset, num_classes: int, rank: int,
                 world: int) -> tuple[DataLoader, DataLoader, torch.Generator]:
    """Shuffled (or class-balanced) training batches and the validation batches, split over DDP ranks.

    Shuffling draws one permutation per epoch from the seed (DistributedSampler), with one process or
    many: N processes with batch B see the same batches, split in N, as one process with batch N*B.
    """
    generator = torch.Generator().manual_seed(cfg.seed)
    if cfg.balanced and world == 1:
        sampler = WeightedRandomSampler(balanced_weights(train_set.items, num_classes), len(train_set),
                                        generator=generator)
    else:
        sampler = DistributedSampler(train_set, world, rank, shuffle=True, seed=cfg.seed)
    val_sampler = DistributedSampler(val_set, world, rank, shuffle=False) if world > 1 else None
    train_loader = DataLoader(train_set, cfg.batch_size, sampler=sampler, num_workers=cfg.workers,
                              collate_fn=collate, generator=generator)
    val_loader = DataLoader(val_set, cfg.batch_size, sampler=val_sampler, num_workers=cfg.workers,
                            collate_fn=collate)
    return train_loader, val_loader, generator


def amp_dtype(cfg: RunConfig, device: torch.device) -> tuple[torch.dtype | None, str]:
    """What --amp runs in on `device` (None: float32) and a line saying so.

    fp16 on CUDA, bf16 elsewhere, except on a CPU without native bf16: there autocast's bf16 is
    emulated (3x slower than fp32 for the whole network on an AVX2 CPU), so the run stays float32.
    """
    if not cfg.amp:
        return None, ""
    if device.type == "cuda":
        return torch.float16, "--amp: fp16 autocast"
    if device.type == "cpu" and not cpu_has_bf16():
        return None, ("--amp: this CPU has no native bf16 (autocast would emulate it, slower than float32); "
                      "training in float32")
    return torch.bfloat16, "--amp: bf16 autocast"
