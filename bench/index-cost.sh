#!/usr/bin/env bash
# What search indexing costs a create (issue 4: "index extraction must not cut create throughput
# by more than half"). Builds the release binary twice: as committed, and from a scratch worktree
# of the same commit in which the write path extracts no index rows (one line replaced, below).
# Both serve the same create loads on a fresh database each, interleaved run by run, and the
# script prints every run; the medians go to docs/performance.md by hand.
#
# Tunables: DURATION (s per wrk run, default 10), RUNS (default 3), BENCH_POSTGRES=1 for a fresh
# PostgreSQL database per run (PG_ADMIN_URL, default postgres://postgres@127.0.0.1:5432/postgres)
# instead of SQLite.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10}
RUNS=${RUNS:-3}
command -v wrk >/dev/null || { echo "wrk is required: apt-get install wrk"; exit 1; }
ROOT=$PWD
WORK=$(mktemp -d)
PID=
cleanup() {
  [ -n "$PID" ] && kill "$PID" 2>/dev/null || true
  git -C "$ROOT" worktree remove --force "$WORK/tree" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

cargo build --release --bin careplane
cp target/release/careplane "$WORK/indexed"

# The variant: the same commit, writing no search index rows. Its own target dir, so the
# committed binary in target/release is never replaced by it.
git worktree add --detach "$WORK/tree" HEAD >/dev/null
store=$WORK/tree/crates/careplane-store/src/sql/store.rs
line='Some(resource) => search_index::extract_with(definitions()?, resource, derived_rows),'
grep -qF "$line" "$store" || { echo "the extraction call moved; update bench/index-cost.sh"; exit 1; }
sed -i "s|$line|Some(_) => Vec::new(),|" "$store"
(cd "$WORK/tree" && CARGO_TARGET_DIR=$ROOT/target/index-cost cargo build --release --bin careplane)
cp target/index-cost/release/careplane "$WORK/unindexed"

admin=${PG_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}
echo "== machine: $(nproc) cores, $(uname -sr); backend: $([ "${BENCH_POSTGRES:-}" = 1 ] && echo postgresql || echo sqlite)"
for run in $(seq "$RUNS"); do
  for variant in indexed unindexed; do
    if [ "${BENCH_POSTGRES:-}" = 1 ]; then
      psql -q "$admin" -c "DROP DATABASE IF EXISTS careplane_index_cost" -c "CREATE DATABASE careplane_index_cost"
      db=${admin%/*}/careplane_index_cost
    else
      rm -f "$WORK"/bench.db*
      db=sqlite://$WORK/bench.db
    fi
    CAREPLANE_DATABASE_URL=$db CAREPLANE_LISTEN_ADDR=127.0.0.1:18482 CAREPLANE_ADMIN_ADDR=127.0.0.1:19482 \
      CAREPLANE_LOG=warn CAREPLANE_WORKER=off "$WORK/$variant" serve &
    PID=$!
    until curl -sf http://127.0.0.1:19482/readyz >/dev/null; do sleep 0.05; done
    for load in create create-observation; do
      resource=$([ "$load" = create ] && echo Patient || echo Observation)
      for conns in 1 16; do
        threads=$(( conns < 2 ? 1 : 2 ))
        out=$(wrk -t"$threads" -c"$conns" -d"${DURATION}s" --latency -s "bench/$load.lua" \
          "http://127.0.0.1:18482/fhir/$resource")
        echo "$out" | grep -q 'Non-2xx' && { echo "$out"; exit 1; }
        printf 'run %s %-9s %-11s %2s conn: %s req/s, p50 %s, p99 %s\n' "$run" "$variant" "$resource" "$conns" \
          "$(echo "$out" | awk '/Requests\/sec/ {print $2}')" \
          "$(echo "$out" | awk '$1 == "50%" {print $2}')" \
          "$(echo "$out" | awk '$1 == "99%" {print $2}')"
      done
    done
    kill "$PID"; wait "$PID" 2>/dev/null || true; PID=
  done
done
