#!/usr/bin/env bash
# `make test`: runs each make target given, one after another, and prints the time each took
# at the end, also when one fails (which stops the run with its exit code), with the disk
# target/ then uses and what is left (a full disk once failed CI's Docker builds).
# Usage: scripts/steps.sh TARGET...
set -uo pipefail

make=${MAKE:-make}
names=() times=()
status=0
summary() {
    echo
    echo "make test: time per step"
    for i in "${!names[@]}"; do
        printf '  %-14s %5d s\n' "${names[$i]}" "${times[$i]}"
    done
    printf '  %-14s %5d s\n' total "$(( $(date +%s) - started ))"
    echo "make test: target/ uses $(du -sh target 2>/dev/null | cut -f1), $(df -h --output=avail . | tail -1 | tr -d ' ') left on its disk"
}
started=$(date +%s)
for target in "$@"; do
    begun=$(date +%s)
    "$make" --no-print-directory "$target"
    status=$?
    names+=("$target") times+=("$(( $(date +%s) - begun ))")
    if [ "$status" -ne 0 ]; then
        summary
        echo "make test: step '$target' failed (exit $status)" >&2
        exit "$status"
    fi
done
summary
