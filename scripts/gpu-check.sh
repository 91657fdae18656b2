#!/usr/bin/env bash
# `make gpu-check`: the one prepared run for a lent GPU machine (issue 24), ten minutes at most.
#
# 1. The release binary: target/release/gpu-attestor (or $GPU_ATTESTOR). GPU machines have no
#    Rust toolchain: build it here (`cargo build --release -p gpu-attestor`) and carry it; where
#    cargo exists and the binary does not, it is built.
# 2. `gpu-attestor gpu-check` (crates/gpu-attestor/src/gpu/gpu_check.rs): the backend opens and
#    self-tests every GPU; every kernel's roots against the CPU reference on a ladder of shapes
#    up to the production one, phase B on a ladder of dataset sizes; the guide's example end to
#    end after set-up; phase A TOPS and phase B GB/s at production size against the profile's
#    peaks; the time references for profiles.json (median of $RUNS runs). Nothing is skipped:
#    without a GPU it fails, naming what is missing.
# 3. JSON to $OUT (default target/gpu-check): gpu-check.json, its log, nvidia-smi's view.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-target/gpu-check}
mkdir -p "$OUT"
BIN=${GPU_ATTESTOR:-target/release/gpu-attestor}
if [ ! -x "$BIN" ]; then
	if ! command -v cargo >/dev/null; then
		echo "gpu-check: no $BIN and no cargo to build it (build it with cargo build --release -p gpu-attestor and carry it)" >&2
		exit 1
	fi
	cargo build --release -p gpu-attestor
fi
nvidia-smi --query-gpu=index,name,pci.bus_id,driver_version,memory.total,clocks.max.sm,clocks.max.mem,power.limit \
	--format=csv >"$OUT/nvidia-smi.csv" 2>&1 || echo "gpu-check: nvidia-smi failed (see $OUT/nvidia-smi.csv)" >&2
started=$(date +%s)
set +e
timeout 540 "$BIN" gpu-check --runs "${RUNS:-20}" --products "${PRODUCTS:-64}" >"$OUT/gpu-check.json" 2>"$OUT/gpu-check.log"
rc=$?
set -e
echo "gpu-check: exit $rc after $(($(date +%s) - started)) s; $OUT/gpu-check.json"
cat "$OUT/gpu-check.log" >&2
if [ -s "$OUT/gpu-check.json" ] && command -v python3 >/dev/null; then
	python3 - "$OUT/gpu-check.json" <<'PY' || true
import json, sys
r = json.load(open(sys.argv[1]))
print("GPUs:", ", ".join(g["name"] for g in r["gpus"]), "driver", r["driver_version"], f"open+self-test {r['open_ms']:.0f} ms")
for t in r["self_tests"]:
    print(f"self-test {t['device']}: {t['elapsed_ms']:.0f} ms, chosen {t['chosen']}, kernels", [(k["kernel"], k["agrees"], k.get("product_ms")) for k in t["kernels"]])
bad = [c for c in r["phase_a_roots"] + r["phase_b_roots"] if not c["agrees"]]
print(f"roots: {len(r['phase_a_roots']) + len(r['phase_b_roots']) - len(bad)} agree, {len(bad)} differ")
g = r.get("guide")
if g:
    print(f"guide example: {g['ms']:.2f} ms after set-up (guide {g['guide_ms']:.0f} ms), checksum agrees: {g['agrees']}")
for t in r["throughput"]:
    frac = t["fraction_of_peak"]
    print(f"phase A GPU {t['gpu']} {t['kernel']}: {t['tops']:.1f} TOPS" + (f" = {100 * frac:.1f} % of peak" if frac else ""))
for m in r["memory"]:
    frac = m["fraction_of_peak"]
    print(f"phase B GPU {m['gpu']}: {m['items']} items, build {m['build_ms']:.0f} ms, walk {m['walk_ms']:.0f} ms = {m['walk_gb_s']:.0f} GB/s" + (f" = {100 * frac:.1f} % of peak" if frac else ""))
for t in r["time_references"]:
    print(f"time references {t['profile']} ({t['runs']} runs): phase A {t['phase_a_ms']:.0f} ms, build {t['build_ms']:.0f} ms, walk {t['walk_ms']:.0f} ms")
for f in r["failures"]:
    print("FAIL:", f)
PY
fi
exit "$rc"
