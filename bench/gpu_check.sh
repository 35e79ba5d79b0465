#!/bin/sh
# Every device check of a session with a lent GPU, in one call (about 8 minutes on an H100/H200).
# Prepare on the CPU machine, so the GPU machine needs nothing from outside:
#   python i3d_tf_to_pt.py --rgb --checkpoint scratch          # model/rgb_scratch.safetensors (carry: model)
#   python3 bench/flow_reference.py --pairs 8 --out bench/flow_ref.npz   # OpenCV's flows (the GPU image lacks contrib)
# then run there, from the repository root, carrying `model`: sh bench/gpu_check.sh
# Each step prints its own lines and a '== FAILED' line if it fails; the others still run.
# Steps: python3 selfcheck.py --full --json (saved as $OUT/selfcheck.json, or in the work folder), the CUDA smoke test (bench/model.py --quick, a 2-epoch train.py --amp on a synthetic dataset, evaluate.py
# and predict.py --precision auto), the TV-L1 check (sh bench/flow_gpu_check.sh: Triton tests on CUDA, bit-exactness
# against the saved OpenCV flows, pairs/s against the roofline), pre-process.py --flow-device cuda end to end, and
# FVD on CUDA (bench/fvd.py).
set -u
export PYTHONUNBUFFERED=1 I3D_OFFLINE=1
step() { echo "== $*"; "$@" || echo "== FAILED: $*"; }
work=${TMPDIR:-/tmp}/i3d-gpu-check
rm -rf "$work" && mkdir -p "$work"
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
# first: the machine's report and every accelerated path against its reference (the Triton and PyTorch TV-L1 against
# OpenCV, the fast path at fp32/fp16/bf16 against the plain model, FVD's example), kept for bench/results_flow_gpu.md
report=${OUT:-$work}/selfcheck.json
step sh -c "python3 selfcheck.py --full --json > '$report'"
python3 -c "import json, sys; [print(c['status'], c['name'] + ':', c['detail']) for c in json.load(open(sys.argv[1]))['checks']]" "$report"
step python3 bench/model.py --device cuda --quick
step python3 make_synthetic_dataset.py "$work/raw" --per-class 8
step python3 pre-process.py "$work/raw" "$work/data" --modalities rgb --size 128 --workers 8
step python3 train.py --data "$work/data" --out "$work/run" --device cuda --amp --epochs 2 --clip-len 32 --crop 112
step python3 evaluate.py "$work/run" --device cuda --clips 3 --crops 3
step python3 predict.py ../shared/data/videos/arm_wrestling.mp4 --device cuda --precision auto
step python3 predict.py "$work/raw/pan_up/clip_000.mp4" --checkpoint "$work/run" --device cuda --precision auto
step sh bench/flow_gpu_check.sh bench/flow_ref.npz
step python3 make_synthetic_dataset.py "$work/flowraw" --per-class 16
step python3 pre-process.py "$work/flowraw" "$work/flowdata" --modalities flow --size 256 --flow-device cuda --workers 12
step python3 bench/fvd.py --device cuda
