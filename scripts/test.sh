#!/usr/bin/env bash
# Runs every test: scripts/test.sh [deno test args], e.g. scripts/test.sh tests/e2e/.
# Installs the test dependencies first (fast once installed). Exits non-zero if a test fails.
set -euo pipefail
# shellcheck source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

# clang, llvm (llvm-strip), libbpf-dev and bpftool build and inspect the BPF objects;
# libbpf1 is the agent's runtime; nginx, python3, node and golang-go run servers under test;
# golang-google-grpc-dev (grpc-go 1.33) is vendored into the gRPC fixtures (no module proxy);
# curl, wrk and hey drive traffic; openssl makes the TLS tests' certificates; prometheus ships
# promtool; strace checks syscalls.
ensure_packages libbpf1 clang llvm libbpf-dev bpftool nginx python3 curl wrk hey golang-go \
  golang-google-grpc-dev openssl prometheus strace redis-server redis-tools python3-redis
command -v node >/dev/null || ensure_packages nodejs
# linux-perf only enables extra checks: try it, but never fail (or demand root) for it.
if [[ $EUID -eq 0 ]]; then
  ensure_packages linux-perf || log "warning: linux-perf could not be installed; continuing"
fi
ensure_deno

# deno test runs from the root (so discovery covers the whole repo); paths given relative
# to the caller's directory are made absolute first so they still mean the same files.
args=()
for arg in "$@"; do
  if [[ $PWD != "$ROOT" && $arg != -* && $arg != /* && -e $arg ]]; then arg="$PWD/$arg"; fi
  args+=("$arg")
done
cd "$ROOT"
# .tools/ holds the private Deno (an npm tree), not project tests.
exec "$DENO" test -A --quiet --ignore=.tools/ "${args[@]}"
