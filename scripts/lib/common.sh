# shellcheck shell=bash
# shellcheck disable=SC2034  # DENO, ROOT: read by the scripts that source this file
# Shared by scripts/run.sh, scripts/test.sh and .ci/run (sourced, not executed).
# Sets ROOT; provides log, die, need_root, ensure_packages, find_deno and ensure_deno (the
# last two set DENO).
# The caller enables `set -euo pipefail`.

# The one place the Deno version is pinned (installed from npm: JSR and GitHub releases
# are not reachable from the machines this runs on).
DENO_VERSION=2.9.6

# Repository root, from this file's location, so the scripts work from any directory.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# Where a private Deno is installed when none (of 2.x) is on PATH; gitignored.
DENO_PREFIX="$ROOT/.tools/deno"

log() { printf 'redprobe: %s\n' "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

# Installing needs root; say why instead of letting apt-get/npm fail obscurely.
need_root() {
  [[ $EUID -eq 0 ]] || die "$1 needs to be installed, which needs root: re-run as root (sudo $0)"
}

APT_UPDATED=
# ensure_packages PKG...: apt-get installs the Debian packages that are not installed yet.
# Asks dpkg first so that runs on a ready machine never touch apt (fast, works offline).
ensure_packages() {
  local pkg missing=()
  for pkg in "$@"; do
    [[ "$(dpkg-query -W -f='${db:Status-Abbrev}' "$pkg" 2>/dev/null)" == ii* ]] ||
      missing+=("$pkg")
  done
  ((${#missing[@]})) || return 0
  need_root "${missing[*]}"
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # The package lists of a fresh machine may be stale or empty: refresh once per run.
  if [[ -z $APT_UPDATED ]]; then
    apt-get update -qq
    APT_UPDATED=1
  fi
  apt-get install -y -qq "${missing[@]}"
}

# is_deno2 BIN: BIN runs and is Deno 2.x ("deno 2.9.6 (stable, ...)").
is_deno2() { [[ "$("$1" --version 2>/dev/null | head -n1)" == "deno 2."* ]]; }

# find_deno: sets DENO to a usable Deno without installing anything; returns 1 if none.
# A Deno 2.x on PATH wins (the user chose it); else the private copy of the pinned version.
find_deno() {
  local bin
  if bin="$(command -v deno)" && is_deno2 "$bin"; then
    DENO="$bin"
    return 0
  fi
  bin="$DENO_PREFIX/node_modules/.bin/deno"
  if [[ "$("$bin" --version 2>/dev/null | head -n1)" == "deno $DENO_VERSION "* ]]; then
    DENO="$bin"
    return 0
  fi
  return 1
}

# ensure_deno: sets DENO, installing the pinned Deno from npm into .tools/deno if needed.
ensure_deno() {
  find_deno && return 0
  need_root "Deno $DENO_VERSION"
  command -v npm >/dev/null || ensure_packages nodejs npm
  log "installing Deno $DENO_VERSION into $DENO_PREFIX"
  # The npm package's postinstall puts the real binary at node_modules/.bin/deno.
  npm install --prefix "$DENO_PREFIX" "deno@$DENO_VERSION" --no-audit --no-fund \
    --loglevel=error >&2
  find_deno || die "npm installed Deno but $DENO_PREFIX/node_modules/.bin/deno does not run"
}
