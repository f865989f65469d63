#!/usr/bin/env bash
# Measures startup, read/create throughput and RSS of the release binary (see bench/README.md).
# Embedded SQLite by default; BENCH_POSTGRES=1 runs the server on a fresh PostgreSQL database
# (PG_ADMIN_URL, default postgres://postgres@127.0.0.1:5432/postgres) instead.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10}
SEED=${SEED:-2000}
command -v wrk >/dev/null || { echo "wrk is required: apt-get install wrk"; exit 1; }
cargo build --release --bin careplane
BIN=$PWD/target/release/careplane
WORK=$(mktemp -d)
trap 'kill "$PID" 2>/dev/null || true; rm -rf "$WORK"' EXIT

echo "== machine: $(nproc) cores, $(grep MemTotal /proc/meminfo | awk '{print int($2/1048576)}') GiB, $(uname -sr)"
python3 bench/startup.py "$BIN" 15

DATABASE=()
if [ "${BENCH_POSTGRES:-}" = 1 ]; then
  admin=${PG_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}
  psql -q "$admin" -c "DROP DATABASE IF EXISTS careplane_bench_run" -c "CREATE DATABASE careplane_bench_run"
  DATABASE=(--database-url "${admin%/*}/careplane_bench_run")
  echo "== backend: postgresql"
fi

cd "$WORK"
CAREPLANE_LISTEN_ADDR=127.0.0.1:18480 CAREPLANE_ADMIN_ADDR=127.0.0.1:19480 CAREPLANE_LOG=warn "$BIN" serve "${DATABASE[@]}" &
PID=$!
until curl -sf http://127.0.0.1:19480/readyz >/dev/null; do sleep 0.05; done
rss() { awk '/VmRSS/ {printf "%.1f MB", $2/1024}' "/proc/$PID/status"; }
echo "idle RSS after start: $(rss)"

python3 - "$SEED" > ids.txt <<'PY'
import json, sys, urllib.request
for i in range(int(sys.argv[1])):
    body = json.dumps({"resourceType": "Patient", "name": [{"family": f"Seed{i}"}], "gender": "female"}).encode()
    req = urllib.request.Request("http://127.0.0.1:18480/fhir/Patient", body, {"Content-Type": "application/fhir+json", "Prefer": "return=minimal"})
    with urllib.request.urlopen(req) as r:
        print(r.headers["Location"].split("/Patient/")[1].split("/")[0])
PY
echo "seeded $(wc -l < ids.txt) patients"

cd - >/dev/null
for conns in 1 16; do
  threads=$(( conns < 2 ? 1 : 2 ))
  echo "== read by id, $conns connection(s)"
  IDS_FILE=$WORK/ids.txt wrk -t"$threads" -c"$conns" -d"${DURATION}s" --latency -s bench/read.lua http://127.0.0.1:18480 \
    | grep -E 'Requests/sec|50%|99%|Non-2xx'
done
for conns in 1 16; do
  threads=$(( conns < 2 ? 1 : 2 ))
  echo "== create, $conns connection(s)"
  wrk -t"$threads" -c"$conns" -d"${DURATION}s" --latency -s bench/create.lua http://127.0.0.1:18480/fhir/Patient \
    | grep -E 'Requests/sec|50%|99%|Non-2xx'
done
echo "RSS after load: $(rss)"
