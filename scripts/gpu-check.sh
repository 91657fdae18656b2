#!/usr/bin/env bash
# `make gpu-check`: the one prepared run for a lent GPU machine (issue 24), ten minutes at most.
#
# GPU machines have no Rust toolchain, so the binaries are built here first and carried:
#   scripts/gpu-check.sh build   (`make gpu-check-build`): the release binary and the release
#                                build of gpu-attestor's unit tests, into target/gpu-check-bin/
#                                (carry that folder to the GPU machine).
# Then on the GPU machine, `make gpu-check`:
# 1. The GPU tests, each in its own process: the unit tests named `cuda_*` (every kernel against the CPU reference on the
#    shapes the emulation tests use, every GPU at once, the self-test passing every kernel) with
#    GPOW_REQUIRE_GPU=1, so a test that finds no GPU fails instead of skipping; a run in which no
#    test ran fails too.
# 2. `gpu-attestor gpu-check` (crates/gpu-attestor/src/gpu/gpu_check.rs): the backend opens and
#    self-tests every GPU; every kernel's roots against the CPU reference on a ladder of shapes
#    up to the production one, phase B on a ladder of dataset sizes; the guide's example end to
#    end after set-up; phase A TOPS and phase B GB/s at production size against the profile's
#    peaks; the time references for profiles.json (median of $RUNS runs). Nothing is skipped:
#    without a GPU it fails, naming what is missing.
# 3. JSON to $OUT (default target/gpu-check): gpu-check.json, the logs, nvidia-smi's view; when
#    the check is stopped at its limit, gpu-check.partial.json from the stages it finished.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN_DIR=target/gpu-check-bin
BIN=${GPU_ATTESTOR:-$BIN_DIR/gpu-attestor}
TESTS=$BIN_DIR/gpu-attestor-tests

build() {
	cargo build --release -p gpu-attestor
	# The unit tests' executable: cargo names it on stderr ("Executable unittests src/lib.rs (PATH)").
	local exe
	exe=$(cargo test --release -p gpu-attestor --lib --no-run 2>&1 | tee /dev/stderr |
		sed -n 's/.*Executable unittests src\/lib.rs (\(.*\))$/\1/p')
	[ -x "$exe" ] || { echo "gpu-check build: cargo named no unit-test executable" >&2; exit 1; }
	mkdir -p "$BIN_DIR"
	cp target/release/gpu-attestor "$BIN_DIR/gpu-attestor"
	cp "$exe" "$TESTS"
	ls -l "$BIN_DIR"
}

if [ "${1:-}" = build ]; then
	build
	exit 0
fi
OUT=${OUT:-target/gpu-check}
mkdir -p "$OUT"
if [ ! -x "$BIN" ] || [ ! -x "$TESTS" ]; then
	if ! command -v cargo >/dev/null; then
		echo "gpu-check: no $BIN or $TESTS and no cargo to build them (run scripts/gpu-check.sh build here and carry $BIN_DIR)" >&2
		exit 1
	fi
	build
fi
nvidia-smi --query-gpu=index,name,pci.bus_id,driver_version,memory.total,clocks.max.sm,clocks.max.mem,power.limit \
	--format=csv >"$OUT/nvidia-smi.csv" 2>&1 || echo "gpu-check: nvidia-smi failed (see $OUT/nvidia-smi.csv)" >&2
# Each GPU test in its own process: a kernel that faults leaves its process's context lost, and
# would fail every test after it in the same process.
started=$(date +%s)
tests_rc=0
passed=0
: >"$OUT/gpu-tests.log"
gpu_tests=$("$TESTS" --list 2>/dev/null | sed -n 's/^\(.*cuda_[a-z0-9_]*\): test$/\1/p')
for t in $gpu_tests; do
	if [ $(($(date +%s) - started)) -gt 100 ]; then
		echo "gpu-check: $t not run: the GPU tests' 100 s are spent"
		tests_rc=1
		continue
	fi
	set +e
	GPOW_REQUIRE_GPU=1 timeout 60 "$TESTS" "$t" --exact --nocapture >>"$OUT/gpu-tests.log" 2>&1
	rc=$?
	set -e
	if [ "$rc" -eq 0 ]; then passed=$((passed + 1)); else tests_rc=1; echo "gpu-check: $t failed (exit $rc)"; fi
done
echo "gpu-check: GPU tests: $passed of $(echo "$gpu_tests" | wc -w) passed, after $(($(date +%s) - started)) s; $OUT/gpu-tests.log"
grep -E '^(test |skipped|\{"device")' "$OUT/gpu-tests.log" || true
if [ "$passed" -eq 0 ]; then
	echo "gpu-check: no GPU test ran" >&2
	tests_rc=1
fi
started=$(date +%s)
set +e
timeout 420 "$BIN" gpu-check --runs "${RUNS:-20}" --products "${PRODUCTS:-64}" >"$OUT/gpu-check.json" 2>"$OUT/gpu-check.log"
rc=$?
set -e
echo "gpu-check: exit $rc after $(($(date +%s) - started)) s; $OUT/gpu-check.json"
grep -v "^gpu-check stage: " "$OUT/gpu-check.log" >&2 || true
# The summary, from the report; from the stage lines on stderr when the run was stopped before
# it (then also kept as gpu-check.partial.json).
if command -v python3 >/dev/null && { [ -s "$OUT/gpu-check.json" ] || grep -q '^gpu-check stage: ' "$OUT/gpu-check.log"; }; then
	python3 - "$OUT/gpu-check.json" "$OUT/gpu-check.log" "$OUT/gpu-check.partial.json" <<'PY' || true
import json, sys
report, log, partial = sys.argv[1:4]
text = open(report).read().strip()
if text:
    r = json.loads(text)
else:
    r = {}
    for line in open(log):
        if line.startswith("gpu-check stage: "):
            r.update(json.loads(line[len("gpu-check stage: "):]))
    json.dump(r, open(partial, "w"), indent=2)
    print(f"gpu-check stopped before its report: the stages it finished are in {partial}")
if "gpus" in r:
    print("GPUs:", ", ".join(g["name"] for g in r["gpus"]), "driver", r["driver_version"], f"open+self-test {r['open_ms']:.0f} ms")
for t in r.get("self_tests", []):
    print(f"self-test {t['device']}: {t['elapsed_ms']:.0f} ms, chosen {t['chosen']} and {t['walk']}, kernels", [(k["kernel"], k["agrees"], k.get("timed_ms")) for k in t["kernels"] + t["walks"]])
roots = r.get("phase_a_roots", []) + r.get("phase_b_roots", [])
bad = [c for c in roots if not c["agrees"]]
print(f"roots: {len(roots) - len(bad)} agree, {len(bad)} differ")
g = r.get("guide")
if g:
    print(f"guide example: {g['ms']:.2f} ms after set-up (guide {g['guide_ms']:.0f} ms), checksum agrees: {g['agrees']}")
for t in r.get("throughput", []):
    frac = t["fraction_of_peak"]
    print(f"phase A GPU {t['gpu']} {t['kernel']}: {t['tops']:.1f} TOPS" + (f" = {100 * frac:.1f} % of peak" if frac else ""))
for m in r.get("memory", []):
    frac = m["fraction_of_peak"]
    print(f"phase B GPU {m['gpu']} {m['kernel']}: {m['items']} items, build {m['build_ms']:.0f} ms, walk {m['walk_ms']:.0f} ms = {m['walk_gb_s']:.0f} GB/s" + (f" = {100 * frac:.1f} % of peak" if frac else ""))
for t in r.get("time_references", []):
    print(f"time references {t['profile']} ({t['runs']} runs): phase A {t['phase_a_ms']:.0f} ms, build {t['build_ms']:.0f} ms, walk {t['walk_ms']:.0f} ms")
    if t.get("measured"):
        print(f"  profiles.json, {t['profile']}'s \"time\":", json.dumps(t["measured"]))
for f in r.get("failures", []):
    print("FAIL:", f)
PY
fi
[ "$rc" -ne 0 ] || rc=$tests_rc
exit "$rc"
