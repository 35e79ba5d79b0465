"""Optical flow between consecutive frames: TV-L1 (the official recipe) in PyTorch or OpenCV, Farneback, DIS."""
from src.flow.extractor import ALGORITHMS, COMPILE_MIN_PAIRS, FlowExtractor, recipe_name, rgb_to_gray, tvl1_backend
