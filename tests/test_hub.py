"""hubconf.py: torch.hub.load(REPO, "i3d", source="local", weights=...) as torchvision's video models load."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from tests.conftest import REPO
from tests.test_weights import assert_matches_reference

HUB_SCRIPT = """
import json, sys
import numpy as np
import torch
from PIL import Image, ImageSequence

repo, gif = sys.argv[1], sys.argv[2]
model = torch.hub.load(repo, "i3d", source="local", weights="rgb_scratch").eval()
new_head = torch.hub.load(repo, "i3d", source="local", weights="rgb_scratch", num_classes=5)
# the shared reference input: every GIF frame as RGB, p / 255 * 2 - 1, decoded here without the repo's code
frames = np.stack([np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(Image.open(gif))])
x = torch.from_numpy(frames).float().div(255).mul(2).sub(1).permute(3, 0, 1, 2)[None]
with torch.no_grad():
    logits = model(x)[0]
print(json.dumps({"type": type(model).__name__, "logits": logits.tolist(), "categories": model.categories,
                  "new_head": new_head.num_classes}))
"""


def test_hub_load_local_gives_the_pretrained_model(shared: Path, tmp_path: Path) -> None:
    gif = shared / "samples" / "v_CricketShot_g04_c01_rgb.gif"
    # from another folder, so that only torch.hub puts the repository on the import path
    result = subprocess.run([sys.executable, "-c", HUB_SCRIPT, str(REPO), str(gif)], cwd=tmp_path,
                            capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": ""})
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["type"] == "I3D" and out["new_head"] == 5 and len(out["categories"]) == 400
    assert_matches_reference(np.array(out["logits"]), out["categories"])
