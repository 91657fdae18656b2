#!/usr/bin/env bash
# Installs cargo-fuzz (libFuzzer driver for `make fuzz`) when it is missing. It builds on stable
# Rust: the fuzz targets are built with `--sanitizer none`, which needs no nightly-only flag.
set -euo pipefail

if cargo fuzz --version >/dev/null 2>&1; then
    echo "cargo-fuzz: $(cargo fuzz --version)"
    exit 0
fi
echo "cargo-fuzz: installing (a few minutes on 2 cores)"
cargo install cargo-fuzz --locked --quiet
cargo fuzz --version
