"""Features of a whole dataset: sliding windows over every video, one array per video and stream (see pipeline)."""
from src.extraction.batching import load_models
from src.extraction.config import ExtractionError, FeatureConfig
from src.extraction.inputs import Video, find_inputs, prepare_feature_dir, shard_videos
from src.extraction.model_config import MODELS, model_config
from src.extraction.pipeline import Summary, run
from src.extraction.presets import PRESETS, describe_presets, preset_options
from src.extraction.windows import Windower, crop_boxes, window_count, window_indices, window_starts
