"""Features of a whole dataset (being split into its stages)."""
from src.extraction.pipeline import *  # noqa: F401,F403
