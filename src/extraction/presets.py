"""Named feature conventions: each preset is a documented set of FeatureConfig options that explicit flags override.

What each convention is, where it comes from, what was confirmed in its sources and what is known to differ
from the published files: docs/feature-presets.md.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from src.extraction.config import STREAMS, ExtractionError


@dataclass(frozen=True)
class Preset:
    """One convention: its name, what it reproduces, who used it, and the options it sets."""

    name: str
    title: str
    used_by: str
    options: dict[str, object] = field(default_factory=dict)


PRESETS: dict[str, Preset] = {p.name: p for p in [
    Preset("i3d", "the official I3D recipe (DeepMind kinetics-i3d), this tool's default",
           "Carreira & Zisserman 2017, deepmind/kinetics-i3d's input recipe",
           dict(weights="rgb_scratch", flow_weights="flow_scratch", fps="recipe", window=16, stride=16,
                resize_to=None, crops=1, pool="mean")),
    Preset("thumos14-cmcs", "the THUMOS-14 I3D features of CMCS, used by ActionFormer and TriDet",
           "CMCS (Liu et al., CVPR 2019) with Finspire13/pytorch-i3d-feature-extraction on dense_flow output; "
           "the features of ActionFormer (Zhang et al., ECCV 2022) and TriDet (Shi et al., CVPR 2023)",
           dict(streams=("rgb", "flow"), concat=True, weights="rgb_imagenet", flow_weights="flow_imagenet", fps=None,
                window=16, stride=4, resize_to=(340, 256), rgb_jpeg=True, flow_jpeg=True, align="drop-first",
                crops=1, crop_order="cmcs", flip_flow="keep", pool="head", short_videos="reject")),
    Preset("ms-tcn", "the frame-wise I3D features of MS-TCN (Breakfast, 50Salads, GTEA)",
           "MS-TCN (Farha & Gall, CVPR 2019) with ahsaniqbal/Kinetics-FeatureExtractor (TensorFlow kinetics-i3d)",
           dict(streams=("rgb", "flow"), concat=True, weights="rgb_imagenet", flow_weights="flow_imagenet", fps=None,
                per_frame=True, window=21, pad="still", resize_to=None, crops=1, pool="head")),
]}


def get_preset(name: str) -> Preset:
    """The preset called `name`; ExtractionError listing the known ones otherwise."""
    if name not in PRESETS:
        raise ExtractionError(f"--preset {name}: unknown; choose one of {', '.join(PRESETS)} (or --preset list)")
    return PRESETS[name]


def preset_options(name: str, explicit: dict[str, object]) -> dict[str, object]:
    """FeatureConfig options of a preset with the explicit ones on top, and the preset's name.

    A preset's --concat applies only when both streams run (so '--streams rgb' alone needs no '--no-concat').
    """
    options = {**get_preset(name).options, **explicit, "preset": name}
    if "concat" not in explicit and set(options.get("streams", ("rgb",))) != set(STREAMS):
        options.pop("concat", None)
    return options


def as_flags(options: dict[str, object]) -> str:
    """Options as the command-line flags that set them, e.g. '--fps native --window 16 --concat'."""
    words = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if key == "resize_to":
            words.append(f"--resize-to {value[0]}x{value[1]}" if value else "(short side 256, centre 224 crop)")
        elif key == "fps":
            words.append("--fps native" if value is None else "--fps 25" if value == "recipe" else f"--fps {value:g}")
        elif isinstance(value, bool):
            words.append(flag if value else f"--no-{flag[2:]}")
        elif isinstance(value, tuple):
            words.append(f"{flag} {','.join(map(str, value))}")
        else:
            words.append(f"{flag} {value}")
    return " ".join(words)


def describe_presets() -> str:
    """What `--preset list` prints: each preset, who used it, and the flags it stands for."""
    lines = []
    for preset in PRESETS.values():
        lines += [f"{preset.name}: {preset.title}", f"    used by: {preset.used_by}",
                  f"    sets: {as_flags(preset.options)}", ""]
    lines.append("Any flag given explicitly overrides the preset's. Sources, what was confirmed in them and what is "
                 "known to differ from the published files: docs/feature-presets.md")
    return "\n".join(lines)
