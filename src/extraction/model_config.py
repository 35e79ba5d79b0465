"""The dataset settings a localisation model (ActionFormer, TriDet) needs to read a folder of features, worked out
from the recipe the folder records (features-recipe.json and features.csv) and printed as YAML."""
from __future__ import annotations

import json
from pathlib import Path

from src.extraction.config import ExtractionError, parse_recipe
from src.extraction.records import CSV_NAME, RECIPE_NAME, read_records
from src.model import INCEPTION_CHANNELS

MODELS = {"actionformer": "ActionFormer", "tridet": "TriDet"}  # TriDet reads ActionFormer's dataset settings


def endpoint_channels(endpoint: str) -> int:
    """C of a pooled Mixed_* endpoint (Mixed_5c: 1024); ExtractionError for the others."""
    key = endpoint.lower()
    if key not in INCEPTION_CHANNELS:
        raise ExtractionError(f"--print-config: features of {endpoint} are not what these models read; extract "
                              "Mixed_5c")
    _, (c0, _, c1, _, c2, c3) = INCEPTION_CHANNELS[key]
    return c0 + c1 + c2 + c3


def _number(text: str) -> float:
    """A CSV field as a number for sorting (0 when it is not one)."""
    try:
        return float(text)
    except ValueError:
        return 0.0


def _folder_recipe(folder: Path) -> tuple[dict[str, str], list[dict[str, str]]]:
    """The folder's recipe words and its finished rows; ExtractionError (one line) when it has none."""
    path = folder / RECIPE_NAME
    try:
        recipe = json.loads(path.read_text())
    except FileNotFoundError:
        raise ExtractionError(f"{folder}: no {RECIPE_NAME}; is it an extract_features.py --out-dir folder?") from None
    except (OSError, ValueError) as exc:
        raise ExtractionError(f"{path}: cannot be read ({exc})") from None
    if not isinstance(recipe, dict):
        raise ExtractionError(f"{path}: not a recipe (expected an object of words)")
    rows = [row for row in read_records(folder).rows.values() if row.get("status") == "ok"]
    if not rows:
        raise ExtractionError(f"{folder}: {CSV_NAME} lists no finished video; run the extraction first")
    words = parse_recipe(rows[0].get("recipe", ""))
    return {**{str(k): str(v) for k, v in recipe.items()}, **words}, rows


def model_config(folder: str | Path, model: str) -> str:
    """The YAML `dataset:` settings (feat_folder, file_ext, input_dim, feat_stride, num_frames, default_fps) with
    comments saying where each feature sits in time, for `model` (actionformer or tridet)."""
    if model not in MODELS:
        raise ExtractionError(f"--print-config {model}: unknown; choose {' or '.join(MODELS)}")
    folder = Path(folder)
    words, rows = _folder_recipe(folder)
    name = MODELS[model]
    streams = {row.get("stream", "") for row in rows}
    if len(streams) != 1:
        raise ExtractionError(f"{folder}: its videos have different streams ({', '.join(sorted(streams))})")
    stream = streams.pop()
    if words.get("pool") == "none":
        raise ExtractionError(f"{folder}: its features are unpooled maps; {name} reads (T', C) rows (--pool mean/head)")
    crops = int(words.get("crops", "1"))
    if crops > 1:
        raise ExtractionError(f"{folder}: its features hold {crops} crops a row; {name} reads (T', C) rows: extract "
                              "with --crops 1 (or average the crop axis yourself)")
    if "," in stream:
        raise ExtractionError(f"{folder}: rgb and flow are in separate files; {name} reads one file a video: "
                              "extract with --concat")
    per_frame = words.get("per_frame", "no") != "no"
    window, stride = int(words.get("window", "16")), int(words.get("stride", "16"))
    dim = endpoint_channels(words.get("endpoint", "Mixed_5c")) * (2 if stream == "rgb+flow" else 1)
    fps_note = ""
    if words.get("fps") not in (None, "native"):
        default_fps = words["fps"]
    else:
        rates = sorted({row.get("fps", "") for row in rows}, key=_number)
        default_fps = rates[0] if len(rates) == 1 and rates[0] else "~"
        fps_note = ("  # native rate, the same for every video here" if default_fps != "~" else
                    f"  # native rates differ ({rates[0]} .. {rates[-1]}): {name} takes each video's fps from the "
                    "annotation json")
    # ActionFormer puts feature k at (k * feat_stride + 0.5 * num_frames) / fps: a per-frame row is centred on its frame
    num_frames = 1 if per_frame else window
    feat_stride = 1 if per_frame else stride
    lines = [f"# {name} dataset settings for {folder} (read from {RECIPE_NAME} and {CSV_NAME}:",
             f"# preset={words.get('preset', 'i3d')} window={window} stride={feat_stride} fps={words.get('fps')})",
             "# where each feature sits in time: row k "
             + (f"is centred on frame k (a {window}-frame window around it)" if per_frame else
                f"covers frames {stride}k .. {stride}k + {window - 1}"),
             f"# {name} places it at the window centre, (k * feat_stride + num_frames / 2) / fps seconds"]
    if words.get("align") == "drop-first":
        lines.append("# --align drop-first: frame 0 here is the video's second frame, so every row sits 1 / fps "
                     "later in the video than that")
    if words.get("tail") in ("repeat-last", "loop"):
        lines.append(f"# --tail {words['tail']}: the last row's window runs past the video's end")
    lines += ["dataset:",
              f"  feat_folder: {folder.resolve()}",
              "  file_prefix: ~",
              f"  file_ext: _{stream}.npy",
              f"  input_dim: {dim}",
              f"  feat_stride: {feat_stride}",
              f"  num_frames: {num_frames}",
              f"  default_fps: {default_fps}{fps_note}"]
    return "\n".join(lines)
