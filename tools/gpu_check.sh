#!/usr/bin/env bash
# GPU check of dynamic VRAM (issue 20): ComfyUI 0.33.0 booted in-process on CUDA with dynamic VRAM on as main.py
# turns it on (comfy_aimdo on the GPU, ModelPatcherDynamic as the loaders' class), then on that GPU the dynamic-VRAM
# tests (each against ModelPatcher on the same GPU) and the training, guider and regularizer tests. Prints one line per
# test file and PASS or FAIL. One command; the tests are limited to GPU_CHECK_TIMEOUT seconds (default 270).
#
#   tools/gpu_check.sh                 with ./driftless's cached ComfyUI 0.33.0 environment (built on first use)
#   GPU_CHECK_PYTHON=python3 DRIFTLESS_COMFYUI=DIR tools/gpu_check.sh
#                                      with another interpreter that has torch (CUDA) and ComfyUI 0.33.0's
#                                      requirements, and ComfyUI 0.33.0 unpacked in DIR
#
# Without a CUDA device it checks that the tests it selects exist, says "no CUDA device: skipped" and exits 0.
# Exit status: 0 passed or skipped, 1 a test failed, 2 the set-up failed (no environment, dynamic VRAM did not
# come on), 124 out of time.
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TESTS=(
    tests/comfy/test_dynamic_vram.py
    tests/comfy/test_training.py
    tests/comfy/test_guider.py
    tests/comfy/test_regularizer_properties.py
)
TIMEOUT="${GPU_CHECK_TIMEOUT:-270}"
say() { echo "[gpu-check] $*"; }

source "$REPO/tools/gpu_python.sh"  # PY: the interpreter

cd "$REPO" || exit 2
START=$(date +%s)
CUDA="$("${PY[@]}" -c 'import torch; print(torch.cuda.is_available())' 2>/dev/null | tail -1)"
if [[ "$CUDA" != True && "$CUDA" != False ]]; then
    say "set-up failed: the interpreter did not start (run ./driftless setup 0.33.0, or set GPU_CHECK_PYTHON and DRIFTLESS_COMFYUI)"
    exit 2
fi
if [[ "$CUDA" == False ]]; then
    if ! "${PY[@]}" -m pytest --collect-only -q "${TESTS[@]}" >/tmp/gpu_check_collect.$$ 2>&1; then
        cat /tmp/gpu_check_collect.$$; rm -f /tmp/gpu_check_collect.$$
        say "FAIL: the selected tests do not collect"
        exit 1
    fi
    COLLECTED="$(grep -c '::' /tmp/gpu_check_collect.$$)"
    rm -f /tmp/gpu_check_collect.$$
    say "no CUDA device: skipped (the ${#TESTS[@]} test files it runs collect: $COLLECTED tests)"
    exit 0
fi

say "CUDA device found; running ${TESTS[*]} (limit ${TIMEOUT} s)"
PYTHONUNBUFFERED=1 timeout --signal=INT --kill-after=20 "$TIMEOUT" \
    "${PY[@]}" -m pytest -p driftless.tools.gpu_check_boot -q -rfE "${TESTS[@]}"
RC=$?
case $RC in
    0) say "PASS in $(( $(date +%s) - START )) s" ;;
    1) say "FAIL: a test failed (see the summary above) after $(( $(date +%s) - START )) s" ;;
    4) say "FAIL: set-up (the usage error above says why)"; RC=2 ;;
    124) say "FAIL: out of time after ${TIMEOUT} s"; RC=124 ;;
    *) say "FAIL: pytest exit $RC" ;;
esac
exit $RC
