#!/usr/bin/env bash
# The GPU checks to run whenever a CUDA machine is at hand (about 5 minutes on an H100/H200):
# the CUDA tests that CPU CI skips, training throughput, CRL step overhead and the query step
# over a 50,000-image pool. Results go to ${OUT:-gpu_results}/. Run from the repository root
# in an environment where `pip install -e ".[test,gpu]"` has been done (gpu: faiss-gpu for core-set).
set -uo pipefail
out=${OUT:-gpu_results}
mkdir -p "$out"
export PYTHONPATH=${PYTHONPATH:-}:$(pwd) PYTHONUNBUFFERED=1
python -c "import torch; print(torch.__version__, torch.cuda.get_device_name())" | tee "$out/device.txt"
python -m pytest -q -rs -k "cuda or gpu" tests/ 2>&1 | tail -15 | tee "$out/cuda_tests.txt"
python bench/bench_crl_step.py --model resnet18 --device cuda --steps 100 --rounds 5 2>&1 | tee "$out/crl_step.txt"
python bench/query_step.py --device cuda --json "$out/query_step.json" 2>&1 | tail -9
python bench/gpu_throughput.py --json "$out/gpu_throughput.json" 2>&1 | tail -6
# issue 10: step cost of each recipe vs baseline, the SWA BatchNorm pass, and one fit epoch of
# each recipe (baseline crl sam swa fmfp sure) on ResNet-18 over 10,240 images
python bench/bench_recipes.py --model resnet18 --device cuda --steps 50 --rounds 5 --n-images 10240 --epoch 2>&1 | tee "$out/recipes.txt"
