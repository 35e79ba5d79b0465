#!/bin/sh
# One short GPU check of the PyTorch TV-L1 (a few minutes): the speed table against OpenCV on this host's CPU,
# EPE against OpenCV on 16 real 256x340 pairs, and the TV-L1 fidelity tests run on CUDA.
# Usage, from the repository root:  sh bench/flow_gpu_check.sh
set -e
python3 bench/flow.py --device cuda --quick --fidelity 16
I3D_FLOW_TEST_DEVICE=cuda python3 -m pytest -q tests/test_flow.py -k "tvl1 and not logits and not top1"
