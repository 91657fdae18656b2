#!/usr/bin/env bash
# Installs the distribution packages the tests use when their commands are missing.
# Arguments: COMMAND:PACKAGE pairs, e.g. prometheus:prometheus.
set -euo pipefail

missing=()
for pair in "$@"; do
    command=${pair%%:*}
    package=${pair#*:}
    command -v "$command" >/dev/null 2>&1 || missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && { echo "packages: all present"; exit 0; }
[ "$(id -u)" = 0 ] || { echo "packages: ${missing[*]} missing, and installing needs root" >&2; exit 1; }
echo "packages: installing ${missing[*]}"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
