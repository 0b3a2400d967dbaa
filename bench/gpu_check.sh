#!/usr/bin/env bash
# A script for a GPU machine: the GPU figures bench/RESULTS.md asks for, in one short run
# (about 9 minutes at most), each part under its own time limit so one stuck part cannot
# take the rest. Run from the repository root on a machine with CUDA torch installed:
#     bash bench/gpu_check.sh [folder]      # logs go to folder (default gpu_results)
# 1. bench/gpu_gpt.py: the 124M GPT in bf16, fit against nanoGPT-style loops, MFU.
# 2. bench/gpu_offload.py: peak GPU memory with and without fsdp_offload, and the largest
#    GPT that trains either way (the ladder stops when its time is spent).
set -u
out=${1:-gpu_results}
py=${PYTHON:-python}
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
{ date -u; nvidia-smi || true; $py -c 'import torch; print(torch.__version__, torch.version.cuda)'; } \
    > "$out/machine.txt" 2>&1
timeout 300 $py bench/gpu_gpt.py --max-seconds 150 2>&1 | tee "$out/gpu_gpt.txt"
echo "gpu_gpt.py exit: ${PIPESTATUS[0]}" | tee -a "$out/gpu_gpt.txt"
timeout 240 $py bench/gpu_offload.py --max-seconds 210 2>&1 | tee "$out/gpu_offload.txt"
echo "gpu_offload.py exit: ${PIPESTATUS[0]}" | tee -a "$out/gpu_offload.txt"
