"""Pretrained I3D weights as data (the official checkpoints, where to get them, their input recipes), the
`i3d()` builder, and the readers of every checkpoint format that converts to this model."""
from src.weights.checkpoint import load_any
from src.weights.errors import CheckpointError
from src.weights.registry import (CHECKPOINTS, FLOW_RECIPE, OFFICIAL_DEMO_OUTPUTS, RGB_RECIPE, SAMPLE_URL, Recipe,
                                  Weights, WeightsUnavailable, cached_path, default_categories, fetch_state_dict,
                                  flow_recipe, get_weights, i3d, load_state_dict, read_label_file, save_state_dict)
from src.weights.streams import STREAM_CHANNELS, Streams, pretrained_streams
