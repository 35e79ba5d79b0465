"""Which items go to train and val, and which items are this shard's."""
from __future__ import annotations

import random
from pathlib import Path

from src.jobs import take_shard
from src.media import natural_key
from src.preprocess.discovery import RawItem


def assign_splits(items: list[RawItem], val_ratio: float, seed: int) -> str:
    """Stratified split: per class, round(n * val_ratio) items to val, at least one (with val_ratio > 0 and two
    or more items) and keeping at least one in train; returns a note naming the classes raised to one val item.

    Deterministic for a given seed and set of item names (each class is shuffled by its own
    random.Random seeded with 'seed:class', independent of the other classes).
    """
    by_class: dict[str, list[RawItem]] = {}
    for item in items:
        by_class.setdefault(item.cls, []).append(item)
    raised = []
    for cls, members in by_class.items():
        members = sorted(members, key=lambda it: natural_key(it.source.name))
        random.Random(f"{seed}:{cls}").shuffle(members)
        n_val = min(round(len(members) * val_ratio), len(members) - 1)
        if val_ratio > 0 and n_val == 0 and len(members) >= 2:
            n_val = 1  # round() gave none: a class without a val item could not be validated at all
            raised.append(cls)
        for i, item in enumerate(members):
            item.split = "val" if i < n_val else "train"
    if not raised:
        return ""
    names = ", ".join(sorted(raised)[:5]) + (f" and {len(raised) - 5} more" if len(raised) > 5 else "")
    return (f"{len(raised)} class(es) too small for --val-ratio {val_ratio:g} to give a val item got one each "
            f"({names})")


def assign_splits_by_source(items: list[RawItem], val_ratio: float, seed: int) -> str:
    """Split items without one so that all segments of a recording land in the same split; returns a note.

    Recordings are split like single items (stratified by their most frequent first label); with a
    single recording there is nothing to group, and its segments are split one by one.
    """
    todo = [it for it in items if not it.split and not it.error]
    groups: dict[Path, list[RawItem]] = {}
    for item in todo:
        groups.setdefault(item.source, []).append(item)
    if len(groups) < 2:
        assign_splits(todo, val_ratio, seed)
        return "one recording: its segments were split one by one (give a split column to control it)"
    stand_ins = []
    for source, members in groups.items():
        firsts = [it.cls for it in members]
        stand_ins.append(RawItem(source, max(sorted(set(firsts)), key=firsts.count), source.name))
    assign_splits(stand_ins, val_ratio, seed)
    how = "stratified"
    if val_ratio > 0 and not any(s.split == "val" for s in stand_ins):
        # every label has a single recording: stratifying leaves val empty, so split the recordings plainly
        ordered = sorted(stand_ins, key=lambda it: natural_key(str(it.source)))
        random.Random(f"{seed}:recordings").shuffle(ordered)
        n_val = min(max(1, round(len(ordered) * val_ratio)), len(ordered) - 1)
        for i, stand_in in enumerate(ordered):
            stand_in.split = "val" if i < n_val else "train"
        how = "not stratified: too few recordings per label"
    for stand_in in stand_ins:
        for item in groups[stand_in.source]:
            item.split = stand_in.split
    return f"{len(groups)} recordings split whole ({how}), so no recording is in both train and val"


def shard_items(items: list[RawItem], shard: tuple[int, int]) -> list[RawItem]:
    """The deterministic subset of shard i of n (every n-th item of the sorted list, from the i-th)."""
    return take_shard(items, shard, key=lambda it: (str(it.split), it.cls, natural_key(it.source.name)))


def shard_by_source(items: list[RawItem], shard: tuple[int, int]) -> list[RawItem]:
    """Shard i of n of the sources (every n-th in sorted order), with all the items cut from them."""
    sources = take_shard(list({str(it.source) for it in items}), shard, key=natural_key)
    mine = set(sources)
    return [it for it in items if str(it.source) in mine]
