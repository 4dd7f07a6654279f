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
# A 1 MB young generation (V8's default grows to 16 MB per semi-space) keeps the agent ~16 MB
# smaller; its allocations are short-lived, so the extra scavenges cost little
# (bench/results/README.md, footprint and ingest). Every way of running the agent passes it
# (the TypeScript launchers take it from scripts/lib/agent_flags.ts). One malloc arena for all
# of the agent's threads: ~4.5 MB less resident memory; no V8 code cache: ~4-5 MB less, and no
# slower a start (same file).
export MALLOC_ARENA_MAX="${MALLOC_ARENA_MAX:-1}"
exec "$DENO" run -A --quiet --no-code-cache --v8-flags=--max-semi-space-size=1,--expose-gc "$ROOT/main.ts" "$@"
