#!/usr/bin/env bash
# The GPU checks to run whenever a CUDA machine is at hand (about 6 minutes on an H100/H200):
# the CUDA tests that CPU CI skips, training throughput, CRL step overhead, the query step
# over a 50,000-image pool, and 4 small sweep trials sharing one GPU. Results go to
# ${OUT:-gpu_results}/. Run from the repository root in an environment where
# `pip install -e ".[test,gpu]"` has been done (gpu: faiss-gpu for core-set; test includes Ray and timm).
set -uo pipefail
out=${OUT:-gpu_results}
mkdir -p "$out"
export PYTHONPATH=${PYTHONPATH:-}:$(pwd) PYTHONUNBUFFERED=1
python -c "import torch; print(torch.__version__, torch.cuda.get_device_name())" | tee "$out/device.txt"
python -m pytest -q -rs -k "cuda or gpu" tests/ 2>&1 | tail -15 | tee "$out/cuda_tests.txt"
python bench/bench_crl_step.py --model resnet18 --device cuda --steps 100 --rounds 5 2>&1 | tee "$out/crl_step.txt"
python bench/query_step.py --device cuda --json "$out/query_step.json" 2>&1 | tail -9
python bench/gpu_throughput.py --json "$out/gpu_throughput.json" 2>&1 | tail -6
# training recipes: step cost of each recipe vs baseline, the SWA BatchNorm pass, and one fit epoch of
# each recipe (baseline crl sam swa fmfp sure) on ResNet-18 over 10,240 images
python bench/bench_recipes.py --model resnet18 --device cuda --steps 50 --rounds 5 --n-images 10240 --epoch 2>&1 | tee "$out/recipes.txt"
# low-budget strategies: badge on CUDA (20,000 x 512, 100 classes, budget 1,000), ours only (the CPU figures
# and the explicit-embedding references are in bench/README.md)
python bench/bench_al_strategies.py --device cuda --skip-ref --skip-embedding 2>&1 | tee "$out/al_strategies.txt"
# activecrl sweep: 4 small trials sharing the GPU (--gpus-per-trial 0.25) vs one after another
python bench/bench_sweep.py --device cuda --gpus-per-trial 0.25 --json "$out/sweep_gpu.json" 2>&1 | tail -4 | tee "$out/sweep_gpu.txt"
# streamed embeddings: DINOv2 ViT-S/14 (random weights, img_size 224) over 50,000 CIFAR-sized random images
# upscaled on the GPU, bf16 autocast (target: >= 5,000 images/s on an H100); about 20 s
python bench/bench_embed.py --gpu --device cuda --gpu-n 50000 --json "$out/embed_gpu.json" 2>&1 | tail -2 | tee "$out/embed_gpu.txt"
