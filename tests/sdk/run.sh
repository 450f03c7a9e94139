#!/usr/bin/env bash
# Runs the SDK compatibility tests: the official openai and anthropic Python SDKs against the
# real gateway and the mock upstream. Creates the project-local virtual environment ($REPO/.venv)
# when missing, installs tests/sdk/requirements.txt into it, builds the binaries unless
# SKIP_BUILD=1 (or TC_BIN/MOCK_BIN name prebuilt ones), then runs pytest with any extra arguments.
# SKIP_INSTALL=1 skips installing its packages (scripts/test installs them beforehand).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="$root/.venv"

if [ "${SKIP_INSTALL:-0}" != "1" ]; then
  # A virtual environment without pip (an interrupted creation) is made again.
  if ! "$venv/bin/python" -m pip --version >/dev/null 2>&1; then
    rm -rf "$venv"
    python3 -m venv "$venv"
  fi
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$here/requirements.txt"
fi

if [ "${SKIP_BUILD:-0}" != "1" ] && [ -z "${TC_BIN:-}${MOCK_BIN:-}" ]; then
  (cd "$root" && cargo build --workspace --bins --quiet)
fi

cd "$here"
exec "$venv/bin/python" -m pytest -q -p no:cacheprovider "$@" "$here/test_sdk.py"
