#!/usr/bin/env bash
# Import throughput: `careplane import` of a directory of Synthea bundles into a fresh SQLite
# file and a fresh PostgreSQL database, RUNS times each; prints resources/s per run.
# Usage: bash bench/import.sh [DIR]   (default ../shared/data/synthea-r4)
# Env: PG_ADMIN_URL (default postgres://postgres@127.0.0.1:5432/postgres), RUNS (default 3),
#      JOBS (default 2).
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-../shared/data/synthea-r4}
runs=${RUNS:-3}
jobs=${JOBS:-2}
admin=${PG_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}
bin=target/release/careplane
cargo build --release --bin careplane >/dev/null
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for run in $(seq "$runs"); do
  rm -f "$tmp"/import.db*
  echo "sqlite run $run: $(CAREPLANE_LOG=warn $bin import --jobs "$jobs" --database-url "sqlite://$tmp/import.db" "$dir" | head -n1)"
  psql -q "$admin" -c "DROP DATABASE IF EXISTS careplane_bench_import" -c "CREATE DATABASE careplane_bench_import"
  url=${admin%/*}/careplane_bench_import
  echo "postgres run $run: $(CAREPLANE_LOG=warn $bin import --jobs "$jobs" --database-url "$url" "$dir" | head -n1)"
done
psql -q "$admin" -c "DROP DATABASE IF EXISTS careplane_bench_import"
