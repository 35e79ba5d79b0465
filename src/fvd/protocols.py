"""The FVD protocols of the video-generation literature as data: which videos, which frames of each, how the
statistics are normalised, how the matrix square root is taken, which preprocessing and network.

Each parameter carries where it comes from: 'source' when read in that project's code (the file is named),
'issue' when taken from issue 26's description of that code without being read here, 'inferred' when
neither states it and this toolkit chose. `--protocol list` prints all of it; docs/fvd.md has the table.
"""
from __future__ import annotations

from dataclasses import dataclass

SOURCE, ISSUE, INFERRED = "confirmed in source", "from the issue text", "inferred"


@dataclass(frozen=True)
class Recipe:
    """One protocol: sampling, statistics, distance and network choices, each with its provenance."""

    name: str
    summary: str
    videos: int | None  # N per set; None: every video
    frames: int  # clip length n
    subsample_real: int  # frame step within a real clip
    subsample_generated: int  # frame step within a generated clip
    real_videos: str  # "first": the first N in set order; "random": N drawn without replacement (seeded)
    real_clip: str  # "start": frames 0, s, ...; "offset": a uniform offset in [0, L - n*s + s - 1]; "window": a
    # uniform draw over every stride-1 window of every video (long videos weigh more)
    generated_clip: str  # the same words, for the generated set (B)
    drop_short: bool  # drop real videos shorter than n*s instead of refusing them
    covariance: str  # "unbiased" (n - 1) or "biased" (n)
    sqrtm: str  # "tf-gan": TF-GAN's symmetric SVD form, float64; "scipy": real part of scipy.linalg.sqrtm(S_g S_r);
    # "svd32": TF-GAN's symmetric SVD form in float32 torch, as VideoGPT/TATS's fvd.py
    resize: str  # "tf1": TF1 resize_bilinear to 224x224; "videogpt": short side 224 (ceil) + centre crop,
    # half-pixel bilinear; "digan": centre square crop, bilinear to 128, uint8, then as videogpt
    network: str  # "tf": batch-norm epsilon 1e-3; "videogpt-eps": 1e-5
    trials: int
    seed: int
    provenance: tuple[tuple[str, str], ...]  # (parameter, where it comes from)

    def describe(self) -> str:
        """Several lines: every parameter and where it comes from."""
        n = "every video" if self.videos is None else str(self.videos)
        lines = [f"{self.name}: {self.summary}",
                 f"  videos per set N = {n}; frames n = {self.frames}; within-clip step s = {self.subsample_real} "
                 f"(real), {self.subsample_generated} (generated); real videos: {self.real_videos}; real clip: "
                 f"{self.real_clip}; generated clip: {self.generated_clip}; drop short real videos: "
                 f"{'yes' if self.drop_short else 'no'}",
                 f"  covariance {self.covariance}; square root {self.sqrtm}; resize {self.resize}; network "
                 f"{self.network}; trials {self.trials}; seed {self.seed}"]
        lines += [f"  - {what}: {where}" for what, where in self.provenance]
        return "\n".join(lines)


SGV = "StyleGAN-V src/metrics/frechet_video_distance.py"
SGV_UTILS = "StyleGAN-V src/metrics/metric_utils.py"
TATS = "SongweiGe/TATS tats/fvd/fvd.py"
DIGAN = "sihyun-yu/digan src/scripts/compute_fvd_kvd.py"
VIDEOGPT = "wilson1yan/VideoGPT videogpt/fvd/fvd.py"

RECIPES: dict[str, Recipe] = {r.name: r for r in (
    Recipe("tf", "google-research frechet_video_distance.py with TF-GAN's distance (the default)", None, 16, 1, 1,
           "first", "start", "start", False, "unbiased", "tf-gan", "tf1", "tf", 1, 0, (
               ("resize, scaling, network, covariance, square root", f"{SOURCE}: google-research "
                "frechet_video_distance/frechet_video_distance.py and TF-GAN (see 'What is computed')"),
               ("clips", "the reference takes the batch it is given; this toolkit's clip options choose it"))),
    Recipe("stylegan-v", "StyleGAN-V's fvd2048_16f / fvd2048_128f / fvd2048_128f_subsample8f "
           "(--frames 16 | 128, --subsample 1 | 8)", 2048, 16, 1, 1, "first", "offset", "start", True, "biased",
           "scipy", "tf1", "tf", 1, 0, (
               ("sqrtm", f"{SOURCE}: {SGV} (scipy.linalg.sqrtm(sigma_gen @ sigma_real, disp=False), real part of "
                "the whole expression)"),
               ("frames n and subsample s, discard_short_videos, generated clip without random offset",
                f"{SOURCE}: {SGV} (load_n_consecutive, subsample_factor, discard_short_videos=True, "
                "load_n_consecutive_random_offset=False for a generated dataset)"),
               ("N = 2048", f"{ISSUE} (the metric names fvd2048_*)"),
               ("real offset range [0, L - n*s + s - 1] and first-N sorted order", f"{ISSUE} ({SGV_UTILS} and the "
                "dataset code not read here); StyleGAN-V left the offset unseeded, here it is seeded"),
               ("biased (1/N) float64 covariance", f"{ISSUE} ({SGV_UTILS} FeatureStats.get_mean_cov not read here)"),
               ("resize", f"{INFERRED}: StyleGAN-V's torchscript detector resizes inside the module "
                "(resize=True) with a mode that is not public; TF1 resize_bilinear to 224x224 is used instead"),
               ("network", "the torchscript port of the TF-Hub I3D; here DeepMind's rgb_scratch TF network, "
                "epsilon 1e-3"))),
    Recipe("tats", "TATS: N clips drawn over every stride-1 window of the real videos", 2048, 16, 1, 1, "first",
           "window", "start", False, "unbiased", "svd32", "tf1", "videogpt-eps", 1, 0, (
               ("window sampling, unbiased covariance, SVD square root", f"{ISSUE} ({TATS} is not in the code "
                "index here; not read)"),
               ("square root in float32 torch (TF-GAN's symmetric form)", f"{INFERRED}: as VideoGPT's fvd.py, "
                "which TATS's is said to follow"),
               ("N = 2048, n = 16, generated clip from frame 0", INFERRED),
               ("network epsilon 1e-5", f"{ISSUE} (pytorch_i3d.py)"),
               ("resize", f"{INFERRED}: TF1 resize_bilinear; TATS's own preprocessing not read here"))),
    Recipe("digan", "DIGAN: 10 trials of N vs N, mean and standard deviation, seed 42, DIGAN's preprocessing", 2048,
           16, 1, 1, "random", "offset", "start", False, "unbiased", "svd32", "digan", "videogpt-eps", 10, 42, (
               ("10 trials, mean and std, seed 42, preprocessing (centre square crop, bilinear to 128, short side "
                "224 half-pixel bilinear, uint8 by truncation)", f"{ISSUE} ({DIGAN} not read here)"),
               ("the order of the preprocessing (truncation after the 128 resize)", INFERRED),
               ("N = 2048, real videos drawn at random per trial, real clip at a random offset", INFERRED),
               ("network epsilon 1e-5", f"{ISSUE} (pytorch_i3d.py)"),
               ("unbiased covariance, float32 SVD square root", f"{INFERRED}: VideoGPT-lineage fvd.py"))),
    Recipe("videogpt", "VideoGPT: N = 256, short side 224 + centre crop, half-pixel bilinear", 256, 16, 1, 1,
           "first", "offset", "start", False, "unbiased", "svd32", "videogpt", "videogpt-eps", 1, 0, (
               ("N = 256, short side 224 (ceil) + centre crop, half-pixel bilinear, unbiased covariance",
                f"{ISSUE} ({VIDEOGPT} not read here)"),
               ("float32 SVD square root (TF-GAN's symmetric form)", f"{INFERRED}: as the VideoGPT-lineage fvd.py"),
               ("network epsilon 1e-5", f"{ISSUE} (pytorch_i3d.py)"),
               ("real clip at a random offset, generated clip from frame 0", INFERRED))),
    Recipe("latte", "Latte: as stylegan-v, N real videos drawn at random, real clips subsampled by 3", 2048, 16, 3, 1,
           "random", "offset", "start", True, "biased", "scipy", "tf1", "tf", 1, 0, (
               ("everything but the two below", f"{ISSUE} (as stylegan-v; Latte's code not read here)"),
               ("N real videos drawn at random (seeded), real step 3, generated step 1", ISSUE))),
)}
PROTOCOL_NAMES = tuple(RECIPES)


def recipe(name: str) -> Recipe:
    """The recipe called `name`; ValueError naming the known ones otherwise."""
    if name not in RECIPES:
        raise ValueError(f"unknown protocol {name!r} (known: {', '.join(RECIPES)}; --protocol list describes them)")
    return RECIPES[name]


def protocol_list() -> str:
    """Every protocol with its parameters and their provenance, for `--protocol list`."""
    return "\n\n".join(r.describe() for r in RECIPES.values())
