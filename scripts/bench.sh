#!/usr/bin/env bash
# `make bench`: runs each benchmark target given as an argument (each beside its baseline, see
# docs/benchmarks.md), one after another so they do not disturb each other, keeps each output
# in var/bench/<target>.log and ends with a summary. A benchmark that fails is reported and the
# others still run; an optional baseline that is missing (node_exporter) is only a note in its
# benchmark's output. Exits non-zero if any benchmark failed.
set -uo pipefail

out=var/bench
mkdir -p "$out"
declare -a rows=()
failed=0
for target in "$@"; do
    echo "=== make $target"
    started=$(date +%s)
    make --no-print-directory "$target" 2>&1 | tee "$out/$target.log"
    status=${PIPESTATUS[0]}
    took=$(( $(date +%s) - started ))
    if [ "$status" -eq 0 ]; then
        rows+=("$(printf '%-17s ok      %4ss' "$target" "$took")")
    else
        rows+=("$(printf '%-17s FAILED  %4ss  (exit %s, see %s)' "$target" "$took" "$status" "$out/$target.log")")
        failed=1
    fi
done

echo
echo "=== make bench: $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%s\n' "${rows[@]}"
for target in "$@"; do
    echo
    echo "--- $target"
    # The figures: every line a benchmark prints that is not cargo's or make's.
    grep -v -e '^make' -e '^ *Compiling' -e '^ *Finished' -e '^ *Running' -e '^warning' "$out/$target.log" | tail -n 20
done
exit "$failed"
