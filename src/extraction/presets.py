"""Named feature conventions: each preset is a documented set of FeatureConfig options that explicit flags override.

What each convention is, where it comes from, what was confirmed in its sources and what is known to differ
from the published files: docs/feature-presets.md.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from src.extraction.config import STREAMS, ExtractionError


@dataclass(frozen=True)
class Preset:
    """One convention: its name, what it reproduces, who used it, the options it sets, what of it was confirmed in
    the sources and what was inferred, and a note on the flow where ours differs from theirs."""

    name: str
    title: str
    used_by: str
    options: dict[str, object] = field(default_factory=dict)
    confirmed: str = ""
    inferred: str = ""
    flow_note: str = ""  # written into features.csv's message when the flow stream runs


PRESETS: dict[str, Preset] = {p.name: p for p in [
    Preset("i3d", "the official I3D recipe (DeepMind kinetics-i3d), this tool's default",
           "Carreira & Zisserman 2017, deepmind/kinetics-i3d's input recipe",
           dict(weights="rgb_scratch", flow_weights="flow_scratch", fps="recipe", window=16, stride=16,
                resize_to=None, crops=1, pool="mean"),
           confirmed="25 fps, short side 256, centre 224, values in [-1, 1], TV-L1 flow clipped to +-20 (its README)"),
    Preset("thumos14-cmcs", "the THUMOS-14 I3D features of CMCS, used by ActionFormer and TriDet",
           "CMCS (Liu et al., CVPR 2019) with Finspire13/pytorch-i3d-feature-extraction on dense_flow output; "
           "the features of ActionFormer (Zhang et al., ECCV 2022) and TriDet (Shi et al., CVPR 2023)",
           dict(streams=("rgb", "flow"), concat=True, weights="rgb_imagenet", flow_weights="flow_imagenet", fps=None,
                window=16, stride=4, resize_to=(340, 256), rgb_jpeg=True, flow_jpeg=True, align="drop-first",
                crops=1, crop_order="cmcs", flip_flow="keep", pool="head", short_videos="reject"),
           confirmed="dense_flow's 340x256 JPEG frames and flow (bound 20, frames 2..N), windows of 16 every 4, "
                     "frame_cnt > 16, head pooling, RGB then flow (ActionFormer #60)",
           inferred="that CMCS ran dense_flow itself; the checkpoints; which crop ActionFormer's files hold"),
    Preset("ms-tcn", "the frame-wise I3D features of MS-TCN (Breakfast, 50Salads, GTEA)",
           "MS-TCN (Farha & Gall, CVPR 2019) with ahsaniqbal/Kinetics-FeatureExtractor (TensorFlow kinetics-i3d)",
           dict(streams=("rgb", "flow"), concat=True, weights="rgb_imagenet", flow_weights="flow_imagenet", fps=None,
                per_frame=True, window=21, pad="still", resize_to=None, crops=1, pool="head"),
           confirmed="the ImageNet checkpoints, every frame, short side 256 + centre 224, 21-frame windows, the "
                     "(2, 7, 7) pool then the mean, RGB then flow",
           inferred="how the first and last ten frames were padded (the loader repeats the end frames)"),
    Preset("ucf-crime-10crop", "the UCF-Crime ten-crop Inception-I3D features of UR-DMU's extractor",
           "UR-DMU (Zhou et al., AAAI 2023), whose feature_extract/i3d_extract.py re-extracts the UCF-Crime I3D files "
           "DeepMIL-style detectors train on (RTFM's and MGFN's own files are ResNet-50 I3D, 2048 wide: not this "
           "network)",
           dict(weights="rgb_imagenet", flow_weights="flow_imagenet", fps=None, window=16, stride=16,
                tail="repeat-last", short_videos="reject", resize_to=(340, 256), resize_filter="pil-lanczos",
                crops=10, crop_order="cmcs", flip_flow="keep", crops_first=True, pool="head"),
           confirmed="frames read by OpenCV at the native rate, 340x256 through PIL's ANTIALIAS (LANCZOS), "
                     "2x/255 - 1, CMCS's ten crops (oversample_data: TL, TR, centre, BL, BR, then the same slices of "
                     "the mirrored frame), windows of 16 every 16 with T' = ceil(N / 16) and the last frame repeated, "
                     "frame_cnt > 16 asserted, the (2, 7, 7) pool, one (10, T', 1024) array a video, hassony2's "
                     "ImageNet-inflated model_rgb.pth (henrryzh1/UR-DMU feature_extract/i3d_extract.py, "
                     "video2frame_split.py, README.md; hassony2/kinetics_i3d_pytorch README.md)",
           inferred="the flow's settings (UR-DMU extracts RGB only: flow_imagenet, CMCS's flip rule); not the "
                    "files UR-DMU trains on, which are DeepMIL's released NAME__k files of another extraction "
                    "(pytorch-i3d at short side 256, the centre first: DeepMIL's README, DeepMIL #2; "
                    "docs/feature-presets.md)"),
    Preset("deepmil-10crop", "DeepMIL's released UCF-Crime ten-crop I3D files (Roc-Ng/DeepMIL)",
           "the UCF-Crime I3D files of Roc-Ng/DeepMIL (Sultani et al.'s MIL, re-done in PyTorch), which UR-DMU and "
           "other anomaly detectors train on",
           dict(weights="rgb_imagenet", flow_weights="flow_imagenet", fps=None, window=16, stride=16, tail="drop",
                short_videos="drop", resize_to=None, crops=10, crop_order="centre-first", per_crop_files=True,
                pool="head"),
           confirmed="ten crops in one file each, NAME__0 the centre, __1..__4 the corners, __5..__9 their mirrored "
                     "counterparts (Roc-Ng/DeepMIL README.md; UR-DMU's list/UCF_Train.list); pytorch-i3d with the "
                     "short side resized to 256 (its author, DeepMIL #2) and 16 frames without overlap a row "
                     "(DeepMIL #19)",
           inferred="the corners' order TL, TR, BL, BR; T' = N // 16, the last frames dropped (a user's 2729 frames "
                    "-> 170 rows matching the released file, DeepMIL #2); rgb_imagenet (its author's answer for "
                    "XD-Violence, XDVioDet #6); OpenCV's bilinear resize (pytorch-i3d's loader reads with OpenCV); "
                    "native rate, head pooling"),
    Preset("xd-violence-5crop", "the XD-Violence five-crop I3D features (Roc-Ng/XDVioDet)",
           "XD-Violence (Wu et al., ECCV 2020), Roc-Ng/XDVioDet, and the detectors trained on its released files",
           dict(weights="rgb_imagenet", flow_weights="flow_imagenet", fps=None, window=16, stride=16,
                align="drop-last", short_videos="drop", resize_to=None, crops=5, crop_order="centre-first",
                per_crop_files=True, pool="head"),
           confirmed="five crops, one file per crop NAME__k.npy, __0 the centre, __1..__4 the corners "
                     "(Roc-Ng/XDVioDet README.md); RGB and flow in separate files of the same name (list/rgb.list, "
                     "list/flow.list); the flow has one frame fewer than the RGB and a longer RGB file loses its last "
                     "row when the two are joined (dataset.py), so RGB row k reads frames 16k .. 16k + 15 as "
                     "--align drop-last's do; pytorch-i3d with the ImageNet checkpoints (XDVioDet #6)",
           inferred="the corners' order TL, TR, BL, BR (the README says 'the corners'; XDVioDet #4's guess, "
                    "torchvision's FiveCrop, puts the centre last, against the README); "
                    "short side 256 by OpenCV (its author's answer for DeepMIL's files, DeepMIL #2); T' = N // 16 "
                    "for RGB and (N - 1) // 16 for flow, which drop-last gives both (one RGB row fewer where 16 "
                    "divides N); native rate, head pooling"),
    Preset("video-features", "v-iashin/video_features' I3D features (models/i3d/extract_i3d.py)",
           "the many users of v-iashin/video_features (dense video captioning, anomaly detection, retrieval)",
           dict(streams=("rgb", "flow"), weights="rgb_imagenet", flow_weights="flow_imagenet", fps=None, window=64,
                stride=64, align="drop-last", short_videos="drop", resize_to=None, resize_filter="pil-bilinear",
                crops=1, pool="head", time_files="video-features"),
           confirmed="stacks of 64 every 64, each reading 65 frames (the RGB its first 64, the flow all 65), "
                     "nothing for shorter videos, the native rate (extraction_fps null), short side 256 with PIL "
                     "bilinear and the long side truncated, centre crop at (S - 224) // 2, values 2x/255 - 1, the "
                     "(2, 7, 7) pool then the mean over time, NAME_rgb/_flow/_fps/_timestamps_ms.npy, weights "
                     "taken from hassony2/kinetics_i3d_pytorch (v-iashin/video_features models/i3d/extract_i3d.py, "
                     "models/transforms.py, i3d_src/i3d_net.py, configs/i3d.yml, utils/utils.py, "
                     "checkpoints/README.md)",
           inferred="that hassony2's i3d_rgb.pt / i3d_flow.pt are its rgb_imagenet / flow_imagenet conversion "
                    "(the issue: byte-identical files; not re-checked here)",
           flow_note="video_features computes its flow with RAFT (PWC-Net before), quantised to 8 bits; this tool's "
                     "is TV-L1, the flow I3D was trained on (video_features PR #14)"),
    Preset("anet-cmcs", "ActivityNet I3D features as ActionFormer reads them (configs/anet_i3d.yaml)",
           "ActionFormer (Zhang et al., ECCV 2022) on ActivityNet-1.3: feat_stride 16, num_frames 16, default_fps 25 "
           "(TriDet's ActivityNet config reads TSP features instead)",
           dict(streams=("rgb", "flow"), concat=True, weights="rgb_imagenet", flow_weights="flow_imagenet", fps=25.0,
                window=16, stride=16, resize_to=(340, 256), rgb_jpeg=True, flow_jpeg=True, align="drop-first",
                crops=1, crop_order="cmcs", flip_flow="keep", pool="head", short_videos="reject"),
           confirmed="feat_stride 16, num_frames 16, default_fps 25, input_dim 2048, file_prefix v_, each row at its "
                     "window's centre (feat_offset = num_frames / 2 / feat_stride), the rows resampled to 192 "
                     "(force_upsampling) (happyharrycn/actionformer_release configs/anet_i3d.yaml, "
                     "libs/datasets/anet.py)",
           inferred="everything else: thumos14-cmcs's pipeline at 25 fps with stride 16 (the extractor of the "
                    "ActivityNet files is not published)"),
    Preset("wtalc", "W-TALC's THUMOS-14 I3D features (Paul et al., ECCV 2018)",
           "W-TALC and the weakly supervised localisation papers that reuse its features",
           dict(streams=("rgb", "flow"), concat=True, weights="rgb_imagenet", flow_weights="flow_imagenet", fps=25.0,
                window=16, stride=16, short_videos="drop", resize_to=None, crops=1, pool="head"),
           confirmed="a row every 16 frames at 25 fps (its evaluation maps t seconds to row t * 25 / 16), 2048 "
                     "values a row, one <dataset>-I3D-JOINTFeatures.npy holding every video's rows "
                     "(sujoyp/wtalc-pytorch detectionMAP.py, options.py, video_dataset.py)",
           inferred="T' = N // 16 and RGB before flow (the paper, not re-read here); the checkpoints, short side "
                    "256 + centre 224, TV-L1 and the head pooling (its extractor is not published)"),
]}


def get_preset(name: str) -> Preset:
    """The preset called `name`; ExtractionError listing the known ones otherwise."""
    if name not in PRESETS:
        raise ExtractionError(f"--preset {name}: unknown; choose one of {', '.join(PRESETS)} (or --preset list)")
    return PRESETS[name]


def preset_options(name: str, explicit: dict[str, object]) -> dict[str, object]:
    """FeatureConfig options of a preset with the explicit ones on top, and the preset's name.

    A preset's --concat applies only when both streams run (so '--streams rgb' alone needs no '--no-concat'), and its
    --crops-first gives way to an explicit --per-crop-files (the other layout of the crops).
    """
    options = {**get_preset(name).options, **explicit, "preset": name}
    if explicit.get("per_crop_files") and "crops_first" not in explicit:
        options.pop("crops_first", None)
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
    """What `--preset list` prints: each preset, who used it, the flags it stands for, what was confirmed and what
    inferred."""
    lines = []
    for preset in PRESETS.values():
        lines += [f"{preset.name}: {preset.title}", f"    used by: {preset.used_by}",
                  f"    sets: {as_flags(preset.options)}"]
        lines += [f"    {label}: {text}" for label, text in (("confirmed in the sources", preset.confirmed),
                                                            ("inferred", preset.inferred),
                                                            ("differs", preset.flow_note)) if text]
        lines.append("")
    lines.append("Any flag given explicitly overrides the preset's. Sources, what was confirmed in them and what is "
                 "known to differ from the published files: docs/feature-presets.md")
    return "\n".join(lines)
