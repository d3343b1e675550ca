#!/usr/bin/env bash
# GPU speed of the Personalization Guider against stock CFG with the LoRA merged (issue 21's "no additional
# overhead"): on CUDA, the guided forward call by call on the four bench models at their own size and, with
# sd15-full, at 512 px; each LoRA layer's stacked GEMM against the stock layer; whole sampling steps. Writes
# bench/results/speed_guidance*_cuda_gpu*.{md,json}. One command, about 6 minutes on an H100.
#
#   tools/gpu_speed.sh                 with ./driftless's cached ComfyUI 0.33.0 environment
#   GPU_CHECK_PYTHON=python3 DRIFTLESS_COMFYUI=DIR tools/gpu_speed.sh
#                                      with another interpreter that has torch (CUDA) and ComfyUI 0.33.0's
#                                      requirements, and ComfyUI 0.33.0 unpacked in DIR
#
# Without a CUDA device it says so and exits 0; a failed part stops it with that part's exit status.
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
say() { echo "[gpu-speed] $*"; }
source "$REPO/tools/gpu_python.sh"  # PY: the interpreter
cd "$REPO" || exit 2
CUDA="$("${PY[@]}" -c 'import torch; print(torch.cuda.is_available())' 2>/dev/null | tail -1)"
[[ "$CUDA" == True ]] || { say "no CUDA device: skipped"; exit 0; }

BENCH=(-m driftless.bench.speed --clock wall)
MODELS=sd15-bench,sdxl-bench,sd35-bench,flux-dev-bench
run() { say "$*"; "${PY[@]}" "${BENCH[@]}" "$@" || { RC=$?; say "FAIL: $* (exit $RC)"; exit $RC; }; }
run --only guidance-forward --repeats 10 --architectures "$MODELS" --suffix gpu
run --only guidance-forward --repeats 10 --resolution 512 --architectures sd15-full,sd15-bench,flux-dev-bench --suffix gpu_512px
run --only guidance-layers --repeats 5 --architectures "$MODELS" --suffix gpu
run --only guidance --repeats 5 --architectures "$MODELS" --suffix gpu
say "done"
