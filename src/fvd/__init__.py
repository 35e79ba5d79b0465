"""Fréchet Video Distance exactly as google-research's TF reference computes it, without TensorFlow, and the
field's other FVD protocols, KVD and precision/recall from the same activations."""
from src.fvd.activation_files import ActivationSet, load_activations, merge_activations, save_activations
from src.fvd.activations import NETWORKS, Embedding, video_activations
from src.fvd.cdfvd import read_cdfvd
from src.fvd.distance import frechet_distance
from src.fvd.inputs import open_set
from src.fvd.metrics import METRICS, compute_metrics, kvd, manifold_coverage, mean_covariance
from src.fvd.pipeline import FVDResult, RunOptions, run_fvd
from src.fvd.protocol import MIN_FRAMES, PROTOCOLS, Protocol
from src.fvd.recipes import RECIPES, Recipe, protocol_list, recipe
from src.fvd.resize import resize_bilinear_tf1
from src.fvd.runs import MetricsResult, run_metrics
from src.fvd.sampling import Pick, pick_clips
from src.fvd.statistics import Statistics, activation_statistics, load_statistics, save_statistics
