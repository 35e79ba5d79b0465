"""Fine-tuning: the training loop, the frozen and trainable parts of the streams, run folders, metrics and the
multi-clip x multi-crop evaluation of a finished run."""
from src.training.config import RunConfig, TrainingError
from src.training.loop import train
from src.training.runs import load_run, run_streams
