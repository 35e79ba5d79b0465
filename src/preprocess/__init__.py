"""Pre-processing: folders of class folders of videos / frame folders, or an annotation file of (multi-label)
segments, -> the official recipe's rgb and flow arrays, split, with a manifest; resumable and sharded.

The stages, in the order a job runs them: options -> discovery -> splits -> plan (and estimates) -> item (the
work on one job) or batched_flow -> manifest; pipeline.run strings them together; legacy imports the
original toolkit's layout.
"""
from src.preprocess.discovery import Discovery, RawItem, discover, discover_annotations
from src.preprocess.legacy import import_legacy_layout, is_legacy_layout
from src.preprocess.manifest import MANIFEST_FIELDS, read_manifest
from src.preprocess.options import Options, PreprocessError
from src.preprocess.pipeline import run
from src.preprocess.splits import assign_splits, assign_splits_by_source
