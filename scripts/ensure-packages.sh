#!/usr/bin/env bash
# Installs the distribution packages the tests use when their commands are missing.
# Arguments: COMMAND:PACKAGE pairs, e.g. prometheus:prometheus; COMMAND "-" checks that the
# package itself is installed (busybox-static, whose /bin/busybox a dynamic busybox could shadow).
set -euo pipefail

missing=()
for pair in "$@"; do
    command=${pair%%:*}
    package=${pair#*:}
    if [ "$command" = "-" ]; then
        dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
    else
        command -v "$command" >/dev/null 2>&1 || missing+=("$package")
    fi
done
[ ${#missing[@]} -eq 0 ] && { echo "packages: all present"; exit 0; }
[ "$(id -u)" = 0 ] || { echo "packages: ${missing[*]} missing, and installing needs root" >&2; exit 1; }
echo "packages: installing ${missing[*]}"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
