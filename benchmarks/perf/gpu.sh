#!/usr/bin/env bash
# The perf table on one CUDA GPU, in under 10 minutes on a current data-centre GPU: float32, then TF32, then bf16
# autocast, each with the adaptive rows, batched restarts and the end-to-end GGL-CMA run at GGL's 25,000-evaluation
# budget; last the vmap engine on LeNet and ConvNet through torch.compile replaying CUDA graphs (mode
# reduce-overhead; ResNet-18 took 277 s to compile on the 2-core CPU and ran slower compiled). Rows go to
# benchmarks/perf/results-gpu-*.json (and .md beside them). Usage: bash benchmarks/perf/gpu.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
python="${PYTHON:-.venv/bin/python}"
common=(--device cuda --victim lenet,convnet,resnet18 --population 8,32,64,256 --repeats 5 --max-seconds 5
        --serial-candidates 32 --adaptive-population 64 --defenses clipping,soteria,sparsification,sign
        --e2e-population 256 --e2e-budget 25000 --e2e-engines inner)
"$python" -m benchmarks.perf "${common[@]}" --out benchmarks/perf/results-gpu-fp32.json
"$python" -m benchmarks.perf "${common[@]}" --tf32 --e2e-budget 0 --restarts 1 --out benchmarks/perf/results-gpu-tf32.json
"$python" -m benchmarks.perf "${common[@]}" --autocast bf16 --e2e-budget 0 --restarts 1 \
    --out benchmarks/perf/results-gpu-bf16.json
"$python" -m benchmarks.perf --device cuda --victim lenet,convnet --population 64,256 --repeats 5 --max-seconds 5 \
    --serial-candidates 32 --engines vmap --compile reduce-overhead --defenses '' --restarts 1 --e2e-budget 0 \
    --out benchmarks/perf/results-gpu-compiled.json
