#!/usr/bin/env bash
# Runs the browser end-to-end tests of the console page.
# Installs what is missing (Debian's chromium and CJK fonts, the npm packages),
# builds the binaries unless SKIP_BUILD=1, then runs node's test runner.
# SKIP_INSTALL=1 skips installing its packages (scripts/test installs them beforehand).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"

if [ ! -x /usr/bin/chromium ] || ! fc-list 2>/dev/null | grep -qi 'cjk'; then
  sudo=""
  if [ "$(id -u)" != "0" ]; then sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium fonts-noto-cjk >/dev/null
fi

cd "$here"
if [ "${SKIP_INSTALL:-0}" != "1" ] && [ ! -d node_modules/playwright-core ]; then
  npm ci --no-audit --no-fund --loglevel=error
fi

if [ "${SKIP_BUILD:-0}" != "1" ]; then
  (cd "$root" && cargo build --bins --quiet)
fi

mkdir -p "$here/artifacts"
# One file at a time: each starts its own gateway and browser, and the machine has two cores.
exec node --test --test-concurrency=1 "$@" "$here"/*.test.mjs
