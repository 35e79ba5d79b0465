"""The FVD protocols of the video-generation literature as data: which videos, which frames of each, how the
statistics are normalised, how the matrix square root is taken, which preprocessing and network.

Each parameter carries where it comes from: 'source' when read in that project's code (the repository, file and
function are named), 'issue' when taken from issue 26's description of that code without being read here (none is
left: every project's code was read), 'inferred' when neither states it and this toolkit chose; 'not reproduced'
names what the project does that is not done here. `--protocol list` prints all of it; docs/fvd.md has the table.
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
    generated_videos: str = "first"  # real_videos' words, for the generated set (B)
    order: str = "natural"  # a folder's videos in "natural" order of their paths, or "codepoint" (Python's sorted)

    def describe(self) -> str:
        """Several lines: every parameter and where it comes from."""
        n = "every video" if self.videos is None else str(self.videos)
        lines = [f"{self.name}: {self.summary}",
                 f"  videos per set N = {n}; frames n = {self.frames}; within-clip step s = {self.subsample_real} "
                 f"(real), {self.subsample_generated} (generated); real videos: "
                 f"{'all (windows)' if self.real_clip == 'window' else self.real_videos}; real clip: "
                 f"{self.real_clip}; generated videos: {self.generated_videos}; generated clip: "
                 f"{self.generated_clip}; drop short real videos: {'yes' if self.drop_short else 'no'}; folder "
                 f"order: {self.order}",
                 f"  covariance {self.covariance}; square root {self.sqrtm}; resize {self.resize}; network "
                 f"{self.network}; trials {self.trials}; seed {self.seed}"]
        lines += [f"  - {what}: {where}" for what, where in self.provenance]
        return "\n".join(lines)


SGV = "universome/stylegan-v src/metrics/frechet_video_distance.py"
SGV_MAIN = "universome/stylegan-v src/metrics/metric_main.py"
SGV_UTILS = "universome/stylegan-v src/metrics/metric_utils.py"
SGV_DATA = "universome/stylegan-v src/training/dataset.py"
TATS = "SongweiGe/TATS tats/fvd/fvd.py"
TATS_SAMPLE = "SongweiGe/TATS scripts/sample_vqgan_transformer_short_videos.py"
DIGAN = "sihyun-yu/digan src/scripts/compute_fvd_kvd.py"
DIGAN_FVD = "sihyun-yu/digan src/scripts/fvd/fvd.py"
DIGAN_DATA = "sihyun-yu/digan src/training/dataset.py"
VIDEOGPT = "wilson1yan/VideoGPT videogpt/fvd/fvd.py"
VIDEOGPT_SCRIPT = "wilson1yan/VideoGPT scripts/compute_fvd.py"
VIDEOGPT_DATA = "wilson1yan/VideoGPT videogpt/data.py"
LATTE = "Vchitect/Latte tools/metrics/frechet_video_distance.py"
LATTE_UTILS = "Vchitect/Latte tools/metrics/metric_utils.py"
WINDOWS = "torchvision VideoClips with its default frames_between_clips=1: one item per stride-1 window"

RECIPES: dict[str, Recipe] = {r.name: r for r in (
    Recipe("tf", "google-research frechet_video_distance.py with TF-GAN's distance (the default)", None, 16, 1, 1,
           "first", "start", "start", False, "unbiased", "tf-gan", "tf1", "tf", 1, 0, (
               ("resize, scaling, network, covariance, square root", f"{SOURCE}: google-research "
                "frechet_video_distance/frechet_video_distance.py and TF-GAN (see 'What is computed')"),
               ("clips", "the reference takes the batch it is given; this toolkit's clip options choose it"))),
    Recipe("stylegan-v", "StyleGAN-V's fvd2048_16f / fvd2048_128f / fvd2048_128f_subsample8f "
           "(--frames 16 | 128, --subsample 1 | 8)", 2048, 16, 1, 1, "first", "offset", "start", True, "biased",
           "scipy", "tf1", "tf", 1, 0, (
               ("N = 2048; n = 16, 128 or 16 with s = 8", f"{SOURCE}: {SGV_MAIN} fvd2048_16f, fvd2048_128f, "
                "fvd2048_128f_subsample8f (max_real = num_gen = 2048)"),
               ("real clip at an offset uniform over [0, L - n*s + s - 1] (both ends included), frames offset + k*s; "
                "real videos shorter than n*s dropped", f"{SOURCE}: {SGV_DATA} VideoFramesFolderDataset.__getitem__ "
                f"(random.randint) and __init__ (discard_short_videos), set by {SGV} compute_fvd; unseeded there "
                "(Python's random in the data-loader workers), seeded here"),
               ("generated clip: frames 0, s, ..., (n-1)*s", f"{SOURCE}: {SGV} compute_fvd "
                "(load_n_consecutive_random_offset=False for a generated dataset)"),
               ("the first N videos in sorted path order (code-point order, not natural order)", f"{SOURCE}: "
                f"{SGV_DATA} VideoFramesFolderDataset.__init__ (sorted() of the folder's paths) and {SGV_UTILS} "
                "compute_feature_stats_for_dataset (items 0 .. N-1 on one GPU); here for a folder set"),
               ("biased (1/N) covariance in float64", f"{SOURCE}: {SGV_UTILS} FeatureStats.get_mean_cov (float64 "
                "sums of the float32 features, raw_cov / N - mean mean^T; here the centred form, equal up to "
                "rounding)"),
               ("sqrtm", f"{SOURCE}: {SGV} compute_fvd (scipy.linalg.sqrtm(sigma_gen @ sigma_real, disp=False), "
                "real part of the whole expression)"),
               ("trials: mean and population standard deviation", f"{SOURCE}: {SGV_MAIN} calc_metric (num_runs, "
                "np.mean / np.std); with its statistics cache on (the default) StyleGAN-V's later runs reuse the "
                "first run's real clips, here each trial draws its own"),
               ("resize", f"{INFERRED}: StyleGAN-V's torchscript detector resizes inside the module "
                "(resize=True) with a mode that is not public; TF1 resize_bilinear to 224x224 is used instead"),
               ("network", "the torchscript port of the TF-Hub I3D; here DeepMind's rgb_scratch TF network, "
                "epsilon 1e-3"),
               ("not reproduced", "StyleGAN-V asserts that every generated video has n*s frames (an assertion "
                "error there), here a generated video needs the (n-1)*s + 1 frames its clip spans; its --mirror "
                "option (flipped copies of the real videos) is not offered; frames inside a frame folder are in "
                "code-point order there, natural order here (the same for zero-padded names)")),
           order="codepoint"),
    Recipe("tats", "TATS: N clips drawn over every stride-1 window of the real videos, frames squashed to 224x224",
           2048, 16, 1, 1, "first", "window", "start", False, "unbiased", "svd32", "squash", "videogpt-eps", 1, 0, (
               ("N = 2048 real clips drawn without replacement over every stride-1 window of n = 16 frames of "
                "every real video (long videos weigh more)", f"{SOURCE}: {TATS_SAMPLE} (the first 2048 clips of a "
                f"shuffled train_dataloader) and SongweiGe/TATS tats/data.py VideoDataset ({WINDOWS}, "
                "sequence_length 16); TATS's real set is the training split"),
               ("generated clip: frames 0 .. n-1", f"{SOURCE}: {TATS_SAMPLE} (16-frame samples taken whole)"),
               ("unbiased covariance and TF-GAN's SVD square root (1e-10 cut) in float32 torch, the generated set's "
                "covariance square-rooted first", f"{SOURCE}: {TATS} cov, _symmetric_matrix_square_root, "
                "trace_sqrt_product, frechet_distance (called as frechet_distance(fake, real))"),
               ("resize: every frame squashed to 224x224, half-pixel bilinear (F.interpolate, align_corners=False), "
                "no crop, then 2x/255 - 1", f"{SOURCE}: {TATS} preprocess"),
               ("network epsilon 1e-5, logits averaged over time", f"{SOURCE}: SongweiGe/TATS tats/fvd/pytorch_i3d.py "
                "Unit3D (BatchNorm3d eps=1e-5), InceptionI3d.forward"),
               ("KVD", f"{SOURCE}: {TATS} polynomial_mmd (scikit-learn polynomial_kernel defaults)"),
               ("not reproduced", "TATS's loader first brings each real clip to the model's resolution (short side, "
                "rounded up, half-pixel bilinear, centre crop) and truncates it to uint8 (tats/data.py preprocess); "
                "here real clips enter at their own size"))),
    Recipe("digan", "DIGAN: 10 trials of N windows vs N, mean and standard deviation, seed 42, DIGAN's preprocessing",
           2048, 16, 1, 1, "first", "window", "start", False, "unbiased", "svd32", "digan", "videogpt-eps", 10, 42, (
               ("10 trials, N = 2048, mean and population standard deviation, seed 42", f"{SOURCE}: {DIGAN} main "
                "(--n_trials 10, --num_videos 2048, --seed 42 for random, numpy and torch; np.mean / np.std)"),
               ("real clips: each trial draws N over every stride-1 window of 16 frames of every video",
                f"{SOURCE}: {DIGAN} main (a new DataLoader(shuffle=True) per trial) and {DIGAN_DATA} UCF101Wrapper "
                f"({WINDOWS}, all videos of both split lists)"),
               ("preprocessing: centre square crop, half-pixel bilinear to 128 on 0-255 floats, uint8 by truncation; "
                "then short side to 224 (rounded up), half-pixel bilinear, centre crop", f"{SOURCE}: {DIGAN_DATA} "
                f"resize_crop, {DIGAN} eval_fvd (astype('uint8')), {DIGAN_FVD} preprocess_single"),
               ("unbiased covariance, float32 SVD square root, the generated set first", f"{SOURCE}: {DIGAN_FVD} "
                "frechet_distance (called as frechet_distance(fake, real))"),
               ("KVD", f"{SOURCE}: {DIGAN} polynomial_mmd (scikit-learn polynomial_kernel defaults: degree 3, "
                "gamma 1/d, coef0 1)"),
               ("network epsilon 1e-5", f"{SOURCE}: sihyun-yu/digan src/scripts/fvd/pytorch_i3d.py Unit3D"),
               ("not reproduced", "for frame-folder datasets (ImageFolderDataset: Sky, Taichi, Kinetics) DIGAN's "
                "items are each video's disjoint 16-frame chunks, not every window; its generated videos are the "
                "generator's 128x128 frames, which the 128 step leaves unchanged here"))),
    Recipe("videogpt", "VideoGPT: N = 256 windows, short side 224 + centre crop, half-pixel bilinear", 256, 16, 1, 1,
           "first", "window", "start", False, "unbiased", "svd32", "videogpt", "videogpt-eps", 1, 0, (
               ("N = 256", f"{SOURCE}: {VIDEOGPT_SCRIPT} eval_fvd (one batch of 256 from the test loader; asserts "
                "256 embeddings)"),
               ("real clips drawn over every stride-1 window of 16 frames of every video", f"{SOURCE}: "
                f"{VIDEOGPT_DATA} VideoDataset ({WINDOWS}) and VideoData._dataloader (DistributedSampler, shuffled "
                "with a fixed seed: every trial reuses the same real clips there); the test split is the real set"),
               ("short side 224 (rounded up), half-pixel bilinear, centre crop", f"{SOURCE}: {VIDEOGPT} preprocess "
                f"-> {VIDEOGPT_DATA} preprocess"),
               ("unbiased covariance, float32 SVD square root, the generated set first", f"{SOURCE}: {VIDEOGPT} cov, "
                "trace_sqrt_product, frechet_distance (called as frechet_distance(fake, real))"),
               ("network epsilon 1e-5; weights converted from the TF-Hub module", f"{SOURCE}: wilson1yan/VideoGPT "
                "videogpt/fvd/pytorch_i3d.py Unit3D, videogpt/fvd/convert_tf_pretrained.py"),
               ("trials: mean and population standard deviation (default 1)", f"{SOURCE}: {VIDEOGPT_SCRIPT} "
                "(--n_trials, np.mean / np.std)"),
               ("not reproduced", "VideoGPT's loader first brings each real clip to the model's resolution (short "
                "side + centre crop) and truncates it to uint8; from an HDF5 dataset (BAIR) it takes one clip per "
                "video at np.random.randint(0, L - n), the last window excluded"))),
    Recipe("latte", "Latte: as stylegan-v, N videos of each set drawn at random, real clips subsampled by 3", 2048, 16,
           3, 1, "random", "offset", "start", True, "biased", "scipy", "tf1", "tf", 1, 0, (
               ("everything not below as stylegan-v", f"{SOURCE}: {LATTE} compute_fvd (StyleGAN-V's code; "
                "tools/utils/dataset.py and metric_utils.py otherwise identical to StyleGAN-V's)"),
               ("real step 3, generated step 1", f"{SOURCE}: {LATTE} compute_fvd (realdata_subsample_factor=3, "
                "gendata_subsample_factor=1)"),
               ("N videos drawn at random from each set, real and generated", f"{SOURCE}: {LATTE_UTILS} "
                "compute_feature_stats_for_dataset (random.sample(range(len(dataset)), N), which reads the generated "
                "folder too); unseeded there, seeded here"),
               ("not reproduced", "Latte's tools/eval_metrics.sh passes --mirror 1, which adds a flipped copy of "
                "every real video to the set drawn from; not offered here")),
           generated_videos="random", order="codepoint"),
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
