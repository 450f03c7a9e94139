#!/usr/bin/env bash
# Runs the real-client tests: Claude Code, Codex CLI and the openai npm SDK against the real
# gateway and the mock upstream. Installs the pinned npm packages into tests/cli/node_modules
# (`npm ci`, from package-lock.json), builds the binaries unless SKIP_BUILD=1 (or TC_BIN/MOCK_BIN
# name prebuilt ones), then runs node's test runner with any extra arguments.
# SKIP_INSTALL=1 skips installing its packages (scripts/test installs them beforehand).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"

if [ "${SKIP_INSTALL:-0}" != "1" ]; then
  (cd "$here" && npm ci --no-audit --no-fund --loglevel=error)
fi

if [ "${SKIP_BUILD:-0}" != "1" ] && [ -z "${TC_BIN:-}${MOCK_BIN:-}" ]; then
  (cd "$root" && cargo build --workspace --bins --quiet)
fi

cd "$here"
exec node --test --test-concurrency=1 "$@" ./*.test.mjs
