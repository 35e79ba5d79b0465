"""matplotlib for files, not screens: the Agg backend, without its first-run log chatter."""
from __future__ import annotations

import logging


def pyplot():
    """matplotlib.pyplot on the Agg backend, its INFO messages (e.g. "generated new fontManager" on the first
    import, which train.py's INFO logging printed mid-training) kept out of the scripts' output."""
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt
