#!/usr/bin/env bash
# The package as users get it: a wheel, installed non-editable into a fresh venv, run from
# another folder. The demo must price its rows: a price table found only beside the source
# tree once made every cost_usd null after `pip install .`.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

python -m pip wheel --quiet --no-deps --wheel-dir "$work/wheel" "$repo"
python -m venv "$work/venv"
"$work/venv/bin/python" -m pip install --quiet "$work"/wheel/*.whl

cd "$work"
set +e
"$work/venv/bin/caption" run "$repo/data/manifest.csv" --out "$work/demo" --config "$repo/configs/demo.toml" \
  --simulate --no-progress
status=$?
set -e
# 0: every row ok; 1: the demo's deliberately broken images are error rows. Anything else failed.
if [ "$status" -gt 1 ]; then
  echo "check_wheel: the demo exited $status" >&2
  exit 1
fi
"$work/venv/bin/python" - "$work/demo/results.parquet" <<'PY'
import sys

import polars as pl

frame = pl.read_parquet(sys.argv[1])
ok = frame.filter(pl.col("status") == "ok")
priced = ok["cost_usd"].is_not_null().sum()
print(f"check_wheel: {frame.height} rows, {ok.height} ok, {priced} priced, ${ok['cost_usd'].sum():.4f}")
if ok.height == 0 or priced != ok.height:
    sys.exit("check_wheel: the installed package priced nothing: is pricing.toml package data?")
PY
