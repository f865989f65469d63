#!/usr/bin/env bash
# Search latency on the Synthea patients (issue 4): p50/p99 of patient-scoped searches at 1 and
# 16 connections, on SQLite (and on PostgreSQL when CAREPLANE_BENCH_DATABASE_URL is set).
# Figures go to docs/performance.md by hand; nothing here asserts a timing.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10}
SYNTHEA=${SYNTHEA:-../shared/data/synthea-r4}
command -v wrk >/dev/null || { echo "wrk is required: apt-get install wrk"; exit 1; }
cargo build --release --bin careplane
BIN=$PWD/target/release/careplane
WORK=$(mktemp -d)
trap 'kill "$PID" 2>/dev/null || true; rm -rf "$WORK"' EXIT
DB=${CAREPLANE_BENCH_DATABASE_URL:-sqlite://$WORK/bench.db}

echo "== machine: $(nproc) cores, $(uname -sr); database: ${DB%%://*}"
# A generated Bundle that the server refuses (one of the 100 breaks per-1) fails the import but
# not the benchmark.
(CAREPLANE_DATABASE_URL=$DB CAREPLANE_LOG=warn "$BIN" import "$SYNTHEA" || true) | tail -n 3
# What autovacuum does on a production server after a bulk load (it is off on the CI machines):
# fresh planner statistics, and a visibility map so index-only scans skip the heap.
case $DB in
  postgres*) psql -q "$DB" -c 'VACUUM (ANALYZE)' ;;
esac
CAREPLANE_DATABASE_URL=$DB CAREPLANE_LISTEN_ADDR=127.0.0.1:18481 CAREPLANE_ADMIN_ADDR=127.0.0.1:19481 \
  CAREPLANE_LOG=warn CAREPLANE_WORKER=off "$BIN" serve &
PID=$!
until curl -sf http://127.0.0.1:19481/readyz >/dev/null; do sleep 0.05; done
curl -sf 'http://127.0.0.1:18481/fhir/Patient?_count=1000&_elements=id' \
  | python3 -c 'import json,sys; [print(e["resource"]["id"]) for e in json.load(sys.stdin)["entry"]]' > "$WORK/ids.txt"
echo "patients: $(wc -l < "$WORK/ids.txt")"
for conns in 1 16; do
  threads=$(( conns < 2 ? 1 : 2 ))
  echo "== patient-scoped search, $conns connection(s)"
  IDS_FILE=$WORK/ids.txt wrk -t"$threads" -c"$conns" -d"${DURATION}s" --latency -s bench/search.lua http://127.0.0.1:18481 \
    | grep -E 'Requests/sec|^ +50%|^ +99%|Non-2xx'
done
# 16 clients that pause between searches (THINK_MS, default 25): latency under a steady load
# below saturation, where the runs above measure it at saturation (all queueing).
echo "== patient-scoped search, 16 connections, ${THINK_MS:-25} ms between a response and the next request"
THINK_MS=${THINK_MS:-25} IDS_FILE=$WORK/ids.txt wrk -t2 -c16 -d"${DURATION}s" --latency -s bench/search.lua http://127.0.0.1:18481 \
  | grep -E 'Requests/sec|^ +50%|^ +99%|Non-2xx'

