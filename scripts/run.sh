#!/usr/bin/env bash
# Starts the redprobe agent: scripts/run.sh [agent flags], e.g. --config FILE, --help.
# Installs what is missing first (Deno from npm, libbpf1 from Debian); fast once installed.
set -euo pipefail
# shellcheck source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

# The agent loads libbpf.so.1 through FFI at run time.
ensure_packages libbpf1
ensure_deno
# No cd: relative paths in the flags (--config FILE) stay relative to the caller's directory;
# Deno finds deno.json (import map, unstable flags) from main.ts's location.
exec "$DENO" run -A --quiet "$ROOT/main.ts" "$@"
