#!/usr/bin/env bash
# Provision what the browser test needs: a system Chromium (Debian's `chromium` package, installed with
# apt-get when missing and this user may) and playwright-core from npm (the version pinned in
# tools/browser/package-lock.json), installed into a cache outside the repo keyed by a hash of
# package.json, package-lock.json and this script, so a warm machine reuses it.
#
#   tools/browser/setup.sh           install what is missing; print two lines: the node_modules folder
#                                    holding playwright-core, then the Chromium executable
#   tools/browser/setup.sh --check   install nothing; same output when everything is there
#   tools/browser/setup.sh --key     print the cache key only
#
# Exit 0 when ready. Exit 3 when the browser cannot be provisioned here (no apt-get, not root and no
# passwordless sudo, no Node >= 20, registry unreachable): the last line on stderr says why, and the
# browser test skips with that reason.
#   DRIFTLESS_CACHE=DIR        where caches are kept (default: ~/.cache/driftless)
#   DRIFTLESS_CHROMIUM=PATH    use this Chromium instead of the one on PATH (nothing is installed)
#   DRIFTLESS_NO_BROWSER=1     provision nothing; the browser test skips
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE_ROOT="${DRIFTLESS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/driftless}"
MODE="${1:-install}"

KEY="$(cat "$HERE/package.json" "$HERE/package-lock.json" "$HERE/setup.sh" | sha256sum | cut -c1-16)"
DIR="$CACHE_ROOT/browser-$KEY"
if [[ "$MODE" == "--key" ]]; then echo "$KEY"; exit 0; fi

unavailable() { echo "[browser] unavailable: $*" >&2; exit 3; }
log() { echo "[browser] $*" >&2; }

find_chromium() {
    if [[ -n "${DRIFTLESS_CHROMIUM:-}" ]]; then
        [[ -x "$DRIFTLESS_CHROMIUM" ]] && echo "$DRIFTLESS_CHROMIUM"
        return 0
    fi
    command -v chromium || command -v chromium-browser || true
}

install_chromium() {
    local sudo=()
    if [[ "$(id -u)" -ne 0 ]]; then
        if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
            sudo=(sudo -n)
        else
            unavailable "Chromium is not installed and this user cannot install it (not root, no passwordless sudo): run 'apt-get install chromium' as root"
        fi
    fi
    command -v apt-get >/dev/null || unavailable "Chromium is not installed and there is no apt-get here: install Chromium and set DRIFTLESS_CHROMIUM"
    local apt=("${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -q -y -o DPkg::Lock::Timeout=300)
    log "installing Debian's chromium with apt-get (first run on this machine: a minute or two)"
    if ! "${apt[@]}" install chromium >&2; then
        "${apt[@]}" update >&2 && "${apt[@]}" install chromium >&2 \
            || unavailable "apt-get install chromium failed (see the log above)"
    fi
}

install_playwright() {
    command -v node >/dev/null && command -v npm >/dev/null \
        || unavailable "Node.js and npm are needed to drive the browser (playwright-core); install nodejs and npm"
    node -e 'process.exit(parseInt(process.versions.node) >= 20 ? 0 : 1)' \
        || unavailable "playwright-core needs Node >= 20 (found $(node --version))"
    local tmp
    tmp="$(mktemp -d "$CACHE_ROOT/browser-tmp.XXXXXX")"
    cp "$HERE/package.json" "$HERE/package-lock.json" "$tmp/"
    log "installing playwright-core $(node -p 'require(process.argv[1]).dependencies["playwright-core"]' "$HERE/package.json") into $DIR"
    if ! (cd "$tmp" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >&2); then
        rm -rf "$tmp"
        unavailable "npm ci failed (is the npm registry reachable?)"
    fi
    rm -rf "$DIR"
    mv "$tmp" "$DIR"
    touch "$DIR/.complete"
    # keep this install and the one before it
    ls -1dt "$CACHE_ROOT"/browser-*/ 2>/dev/null | grep -v browser-tmp | tail -n +3 | xargs -r rm -rf
}

[[ -n "${DRIFTLESS_NO_BROWSER:-}" ]] && unavailable "DRIFTLESS_NO_BROWSER is set"
CHROMIUM="$(find_chromium)"
if [[ -z "$CHROMIUM" || ! -f "$DIR/.complete" ]]; then
    [[ "$MODE" == "--check" ]] && unavailable "not provisioned: run tools/browser/setup.sh (or ./driftless test)"
    [[ -n "${DRIFTLESS_CHROMIUM:-}" && -z "$CHROMIUM" ]] && unavailable "DRIFTLESS_CHROMIUM=$DRIFTLESS_CHROMIUM is not an executable"
    mkdir -p "$CACHE_ROOT"
    exec 9>"$CACHE_ROOT/.browser-lock"
    flock 9   # one installer at a time; a second one finds the work done
    START=$(date +%s)
    CHROMIUM="$(find_chromium)"
    if [[ -z "$CHROMIUM" ]]; then
        install_chromium
        CHROMIUM="$(find_chromium)"
        [[ -n "$CHROMIUM" ]] || unavailable "apt-get installed chromium but no chromium executable is on PATH"
    fi
    [[ -f "$DIR/.complete" ]] || install_playwright
    log "provisioned in $(( $(date +%s) - START )) s"
fi

echo "$DIR/node_modules"
echo "$CHROMIUM"
