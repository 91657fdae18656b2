#!/usr/bin/env bash
# `make bench`: one release build (the one every benchmark measures, see the Makefile), then each benchmark target given as an argument (each beside
# its baseline, see docs/benchmarks.md), one after another so they do not disturb each other.
# Each benchmark's output goes to var/bench/<target>.log and its headline figures to
# var/bench/<target>.tsv (xtask/src/report.rs); at the end `xtask bench-table` rewrites the
# table at the top of docs/benchmarks.md from them, with this run's date, machine and times.
# A benchmark that fails is reported, keeps its earlier rows in the table (with their own
# dates), and the others still run; an optional baseline that is missing (node_exporter) is
# only a note. Exits non-zero if the build or any benchmark failed.
set -uo pipefail

cargo=${CARGO:-cargo}
out=var/bench
rm -rf "$out"
mkdir -p "$out"
began=$(date +%s)
load=$(cut -d' ' -f1 /proc/loadavg)

echo "=== release build: every binary of the workspace, xtask included"
if ! "$cargo" build --release --workspace --bins; then
    echo "make bench: the release build failed"
    exit 1
fi
built=$(( $(date +%s) - began ))

declare -a rows=() failures=() times=()
for target in "$@"; do
    echo "=== make $target"
    started=$(date +%s)
    BENCH_TARGET="$target" BENCH_DATE="$(date -u '+%Y-%m-%d %H:%M')" BENCH_FIGURES="$out/$target.tsv" \
        make --no-print-directory "$target" 2>&1 | tee "$out/$target.log"
    status=${PIPESTATUS[0]}
    took=$(( $(date +%s) - started ))
    times+=("$target ${took} s")
    if [ "$status" -eq 0 ]; then
        printf '%s\tok\t%s\n' "$target" "$took" >>"$out/status.tsv"
        rows+=("$(printf '%-17s ok      %4ss' "$target" "$took")")
    else
        printf '%s\tfailed\t%s\n' "$target" "$took" >>"$out/status.tsv"
        rows+=("$(printf '%-17s FAILED  %4ss  (exit %s, see %s)' "$target" "$took" "$status" "$out/$target.log")")
        failures+=("$target")
    fi
done

total=$(( $(date +%s) - began ))
benches=$(( total - built ))
cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
if [ "${#failures[@]}" -eq 0 ]; then
    outcome="all passed"
else
    outcome="FAILED: ${failures[*]} (their rows are from earlier runs)"
fi
joined=$(printf '%s, ' "${times[@]}")
summary="Last run: \`make bench\`, $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores ($cpu), load average $load before it; \
$(( benches / 60 )) min $(( benches % 60 )) s for $# benchmarks after $(( built / 60 )) min $(( built % 60 )) s of release build; $outcome. \
Each: ${joined%, }."

echo
echo "=== make bench: $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "release build   ok      ${built}s"
printf '%s\n' "${rows[@]}"
echo "benchmarks took $benches s, $total s in all"
if ! ./target/release/xtask bench-table "$out" "$summary"; then
    echo "make bench: the table of docs/benchmarks.md was not rewritten"
    exit 1
fi
[ "${#failures[@]}" -eq 0 ]
