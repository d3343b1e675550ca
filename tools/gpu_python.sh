# Sourced by the GPU scripts (tools/gpu_check.sh, tools/gpu_speed.sh) with REPO set: PY, the command of the
# interpreter with ComfyUI 0.33.0 importable and `import driftless` resolving to this checkout. GPU_CHECK_PYTHON names
# another interpreter (with DRIFTLESS_COMFYUI the ComfyUI 0.33.0 folder); by default ./driftless's cached environment.
if [[ -n "${GPU_CHECK_PYTHON:-}" ]]; then
    mkdir -p "$REPO/.driftless/pythonpath" && ln -sfn "$REPO" "$REPO/.driftless/pythonpath/driftless"
    PY=(env "PYTHONPATH=$REPO/.driftless/pythonpath${PYTHONPATH:+:$PYTHONPATH}" "$GPU_CHECK_PYTHON")
else
    PY=("$REPO/driftless" --host 0.33.0 python)
fi
