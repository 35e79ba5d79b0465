#!/bin/sh
# One prepared GPU check of TV-L1 (a few minutes on an H100/H200) for a session with a lent GPU.
#   1. here, on the CPU machine (opencv-contrib): python3 bench/flow_reference.py --pairs 16 --out bench/flow_ref.npz
#   2. there, from the repository root (the file travels with the working tree): sh bench/flow_gpu_check.sh
# It runs: the Triton TV-L1 tests on CUDA (each kernel against the PyTorch building blocks on the CPU, the PTX
# checks); the Triton flow against OpenCV's saved flows (EPE and how many pairs are bit-identical) and the speed
# of the Triton path and the compiled PyTorch port; the Triton rows at batch 32/128/512 against the roofline;
# and, where this OpenCV has the contrib module, the PyTorch port's fidelity tests on CUDA.
set -e
REF=${1:-bench/flow_ref.npz}
export PYTHONUNBUFFERED=1
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
I3D_FLOW_TEST_DEVICE=cuda python3 -m pytest -q -x -p no:cacheprovider tests/test_flow_triton.py
python3 bench/flow_gpu.py "$REF" --modes triton,compiled --batches 32,128
python3 bench/flow.py --device cuda --triton-only --triton-batches 32,128,512
if python3 -c "import cv2; cv2.optflow" 2>/dev/null; then
    I3D_FLOW_TEST_DEVICE=cuda python3 -m pytest -q -p no:cacheprovider tests/test_flow.py -k "tvl1 and not logits and not top1"
fi
