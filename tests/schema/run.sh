#!/usr/bin/env bash
# Drives the console API with schemathesis (PyPI, pinned in requirements.txt) from the OpenAPI
# document the running binary serves at /api/console/openapi.json, with every check, a bounded
# number of examples per operation and a fixed seed, so a run takes about two minutes and is
# reproducible. Installs schemathesis into the project-local .venv (created when missing), builds
# the binaries unless SKIP_BUILD=1 (or TC_BIN names a prebuilt one), starts token-console on a
# free port with a fresh database, and stops it at the end. Extra arguments go to schemathesis.
#
#   tests/schema/run.sh [--max-examples N] [--seed S] …
#   SCHEMA_EXAMPLES=100 SCHEMA_SEED=7 tests/schema/run.sh
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

if [ "${SKIP_BUILD:-0}" != "1" ] && [ -z "${TC_BIN:-}" ]; then
  (cd "$root" && cargo build --bin token-console --quiet)
fi
bin="${TC_BIN:-$root/target/debug/token-console}"

work="$(mktemp -d -t token-console-schema.XXXXXX)"
server_pid=""
cleanup() {
  if [ -n "$server_pid" ]; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

# No providers are needed: only the console API is driven. max_keys is high so that the keys
# schemathesis creates never run into the limit (that 409 is tested in tests/console_api.rs).
# The push endpoint is on (its key unknown to schemathesis: every push is refused with 401).
cat > "$work/config.yaml" <<YAML
host: 127.0.0.1
port: 0
database_url: sqlite://$work/tc.db
console:
  max_keys: 100000
  ingest_key: schemathesis-ingest-key-0123456789
YAML

(cd "$work" && exec env -u CONSOLE_ADMIN_KEY -u OPENAI_API_KEY -u ANTHROPIC_API_KEY RUST_LOG=warn \
  "$bin" --config "$work/config.yaml" > "$work/stdout.log" 2> "$work/server.log") &
server_pid=$!
line=""
for _ in $(seq 300); do
  line="$(grep -m1 '^token-console ready ' "$work/stdout.log" 2>/dev/null || true)"
  [ -n "$line" ] && break
  kill -0 "$server_pid" 2>/dev/null || break
  sleep 0.1
done
if [ -z "$line" ]; then
  echo "token-console did not start:" >&2
  cat "$work/server.log" >&2
  exit 1
fi
url="$(printf '%s\n' "$line" | sed -n 's/.* gateway=\([^ ]*\).*/\1/p')"
[ -n "$url" ] || { echo "no gateway URL in: $line" >&2; exit 1; }
echo "==> schemathesis against $url/api/console/openapi.json"

status=0
SCHEMATHESIS_HOOKS="$here/hooks.py" "$venv/bin/schemathesis" --config-file "$here/schemathesis.toml" \
  run "$url/api/console/openapi.json" \
  --checks all \
  --max-examples "${SCHEMA_EXAMPLES:-40}" \
  --seed "${SCHEMA_SEED:-20260220}" \
  --request-timeout 10 \
  --no-color \
  "$@" || status=$?

if grep -q "panicked" "$work/server.log"; then
  echo "the server panicked during the run:" >&2
  grep -A5 "panicked" "$work/server.log" >&2
  status=1
fi
exit "$status"
