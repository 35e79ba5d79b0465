"""Measuring the model: speed of its faster paths as ratios within one run, memory, FLOPs and per-block profiles."""
