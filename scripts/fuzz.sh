#!/usr/bin/env bash
# `make fuzz`: builds the cargo-fuzz targets of fuzz/ and runs each for SECONDS.
# Usage: scripts/fuzz.sh SECONDS TARGET...
#
# Stable Rust: `--sanitizer none` (the code under test has no `unsafe`, so AddressSanitizer,
# which needs nightly's -Zsanitizer, would add little). A release build (the default,
# FUZZ_BUILD=--release) takes about as long to build here as `--dev` and runs 30 to 150 times
# more inputs a second.
# New inputs go to var/fuzz/corpus/<target> (kept between runs, never committed); the seeds in
# fuzz/corpus/<target> are read only. A crash leaves its input in fuzz/artifacts/<target>/ and
# fails the run: turn it into a unit test in the crate that owns the code, then fix it.
set -euo pipefail

seconds=$1
shift
build=${FUZZ_BUILD:---release}
cd "$(dirname "$0")/../fuzz"
started=$(date +%s)
cargo fuzz build --sanitizer none "$build"
echo "fuzz: built in $(( $(date +%s) - started )) s"
for target in "$@"; do
    scratch=../var/fuzz/corpus/$target
    mkdir -p "$scratch" "corpus/$target"
    echo "fuzz: $target for ${seconds}s"
    log=../var/fuzz/$target.log
    status=0
    cargo fuzz run --sanitizer none "$build" "$target" "$scratch" "corpus/$target" -- \
        -max_total_time="$seconds" -max_len=65536 -timeout=20 -rss_limit_mb=2048 -print_final_stats=1 \
        >"$log" 2>&1 || status=$?
    grep -E '^(stat::number_of_executed_units|stat::average_exec_per_sec|stat::new_units_added)' "$log" || true
    if [ "$status" -ne 0 ]; then
        tail -n 40 "$log" >&2
        echo "fuzz: $target failed (exit $status); the input is in fuzz/artifacts/$target/, the log in var/fuzz/$target.log" >&2
        exit 1
    fi
done
echo "fuzz: all targets ran ${seconds}s each without a crash ($(( $(date +%s) - started )) s in all)"
