"""Fréchet Video Distance exactly as google-research's TF reference computes it, without TensorFlow."""
from src.fvd.activations import Embedding, video_activations
from src.fvd.distance import frechet_distance
from src.fvd.inputs import open_set
from src.fvd.pipeline import FVDResult, RunOptions, run_fvd
from src.fvd.protocol import MIN_FRAMES, PROTOCOLS, Protocol
from src.fvd.resize import resize_bilinear_tf1
from src.fvd.statistics import Statistics, activation_statistics, load_statistics, save_statistics
