"""Pre-processing (being split into its stages): folders of videos -> rgb and flow arrays."""
from src.preprocess.pipeline import *  # noqa: F401,F403
from src.preprocess.pipeline import _base_row, _prepare_out_dir, _shape_text, _write_text_atomic  # noqa: F401
