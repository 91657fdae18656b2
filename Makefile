# The two commands of the README: `make run` and `make test`.
# `make test` sets up everything a fresh Debian machine needs (as root): the Docker engine and a
# Python virtualenv with the independent test clients, then runs fmt, clippy and every test.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
CARGO ?= cargo
VENV ?= .venv
PYTHON := $(VENV)/bin/python
export REQUIRE_TEST_TOOLS := 1
export TEST_PYTHON := $(abspath $(PYTHON))

.PHONY: run test dist setup docker packages venv lint build unit-tests python-tests fuzz fuzz-tools bench bench-packages bench-startup bench-gpow bench-monitor bench-containers bench-signatures bench-ssh bench-tenant-ssh bench-ports bench-volumes bench-resume bench-events bench-api bench-doors load faults engine-tests clean gpu-check gpu-check-build

## Build everything and start the executor on the embedded dev config (no GPU needed).
run:
	$(CARGO) build --workspace --bins
	mkdir -p var
	exec ./target/debug/executor --server --config config/executor.dev.toml

## The one prepared run for a lent GPU machine (scripts/gpu-check.sh): every kernel against the
## CPU reference, the guide's example, TOPS and GB/s, time references; JSON to $$OUT.
gpu-check:
	scripts/gpu-check.sh

## What gpu-check runs, built here (GPU machines have no Rust): carry target/gpu-check-bin.
gpu-check-build:
	scripts/gpu-check.sh build

## The release tarball operators deploy (docs/executor.md): target/dist/executor-<version>-x86_64-linux.tar.gz.
dist:
	$(CARGO) xtask dist

## Everything CI runs, step by step, with the time of each step at the end. The fuzz targets'
## corpora are replayed by an ordinary test (tests/tests/fuzz_corpora.rs); fuzzing itself is
## `make fuzz`. No incremental caches: a run from a clean checkout gains nothing from them, and
## they were 4.5 GiB of its disk.
test:
	@CARGO_INCREMENTAL=0 MAKE="$(MAKE)" scripts/steps.sh setup lint build unit-tests python-tests engine-tests

setup: docker packages venv

## Distribution packages the tests use: Prometheus and promtool (a real scraper), busybox-static
## (test images are built from it: nothing can be pulled), systemd-analyze (the unit), sshd
## (deploy.sh's test host), debootstrap and docker-compose (the executor image and compose file),
## rsync (renters' `rsync -e ssh`, with the host's rsync copied into a test image).
packages:
	@scripts/ensure-packages.sh prometheus:prometheus promtool:prometheus systemd-analyze:systemd sshd:openssh-server debootstrap:debootstrap docker-compose:docker-compose -:busybox-static docker-registry:docker-registry ip:iproute2 tc:iproute2 ssh:openssh-client ssh-keygen:openssh-client rsync:rsync

## Start the Docker engine, installing it from the distribution if it is missing.
docker:
	@scripts/ensure-docker.sh

## Python virtualenv with grpcio, reflection, health checking and bittensor-wallet.
venv: $(VENV)/.installed

$(VENV)/.installed: tests/python/requirements.txt
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -r tests/python/requirements.txt
	touch $@

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) xtask invariants

build:
	$(CARGO) build --workspace --all-targets

# DIST_PROFILE: the deployment tests pack unoptimised binaries (see xtask/src/dist.rs).
unit-tests: build
	export DIST_PROFILE=dist-test; \
	if command -v cargo-nextest >/dev/null; then \
		$(CARGO) nextest run --workspace --no-fail-fast; \
	else \
		$(CARGO) test --workspace --no-fail-fast; \
	fi

python-tests: build venv
	$(PYTHON) -m pytest -q tests/python

## Tests that restart the Docker engine (ignored by unit-tests): run alone, after the others,
## since every other test would see the engine go.
engine-tests: build
	if command -v cargo-nextest >/dev/null; then \
		$(CARGO) nextest run --workspace --run-ignored only --test-threads 1 -E 'binary(engine_restart)'; \
	else \
		$(CARGO) test -p e2e --test engine_restart -- --ignored --test-threads=1; \
	fi

## Fuzz targets of fuzz/ (docs/reliability.md): config, image references, attestor messages,
## report verification, the SSH command allow-list, signed request metadata, cosign payloads.
## Each runs for FUZZ_SECONDS; long runs by hand, e.g. `make fuzz FUZZ_SECONDS=3600`.
FUZZ_SECONDS ?= 60
FUZZ_BUILD ?= --release
FUZZ_TARGETS := config image_reference attestor_message report_verify ssh_command signed_metadata cosign_payload
fuzz: fuzz-tools
	FUZZ_BUILD=$(FUZZ_BUILD) scripts/fuzz.sh $(FUZZ_SECONDS) $(FUZZ_TARGETS)

## cargo-fuzz, installed once (stable Rust is enough: see scripts/fuzz.sh).
fuzz-tools:
	@scripts/ensure-cargo-fuzz.sh

## Benchmarks run the xtask of the workspace's one release build (`--workspace --bins`), the
## build whose binaries they measure (build_release in xtask/src/main.rs): a build of one package
## (`cargo run -p xtask`) resolves features apart and would compile the shared crates again.
XTASK_RELEASE = $(CARGO) build --release --quiet --workspace --bins && ./target/release/xtask

## One release build, then every benchmark below beside its baseline, one after another; their
## headline figures become the table at the top of docs/benchmarks.md (scripts/bench.sh). A
## missing optional baseline (node_exporter, when not root) is a note, not a failure.
bench: docker packages bench-packages
	@scripts/bench.sh bench-startup bench-gpow bench-monitor bench-containers bench-signatures bench-ssh bench-tenant-ssh bench-ports bench-volumes bench-resume bench-events bench-api bench-doors

## The benchmarks' optional baseline packages: node_exporter beside gpu-monitor.
bench-packages:
	@scripts/ensure-packages.sh prometheus-node-exporter:prometheus-node-exporter

## Cold start to all SERVING and resident memory, release build (docs/benchmarks.md).
bench-startup:
	$(XTASK_RELEASE) bench-startup

## gpu-monitor: CPU cost at 1 Hz and scrape latency, beside node_exporter when installed.
bench-monitor:
	$(XTASK_RELEASE) bench-monitor

## Create-to-running through container-runtime against docker run -d.
bench-containers:
	$(XTASK_RELEASE) bench-containers

## The whole node under load: 100 creates against a cap of 10, thousands of signed RPCs,
## 100 SSH attempts against the rate limit, peak memory of each process (docs/reliability.md).
load:
	$(CARGO) xtask load

## Faults under load: kill -9 of every service, a Docker engine restart, a torn grants file, a full
## data disk (docs/reliability.md).
faults:
	$(CARGO) xtask faults

## Create with verify_signatures (signed image, local registry) against a create without.
bench-signatures:
	$(XTASK_RELEASE) bench-signatures

## validator-access's SSH server against the distribution's sshd (needs openssh-server).
bench-ssh:
	$(XTASK_RELEASE) bench-ssh

## Renters: ssh `true` into a container beside `docker exec` and the validator path; scp of
## 256 MiB beside `docker cp` (docs/benchmarks.md).
bench-tenant-ssh:
	$(XTASK_RELEASE) bench-tenant-ssh

## Published ports: create-to-running with 3 ports beside `docker run -d -p`, and throughput
## through a published port beside `docker run -p` (as root; docs/benchmarks.md).
bench-ports:
	$(XTASK_RELEASE) bench-ports

## Volumes: dd onto a volume inside a container beside the same on the host's disk, and
## create-to-running with one volume beside none (as root; docs/benchmarks.md).
bench-volumes:
	$(XTASK_RELEASE) bench-volumes

## Rentals after a reboot: ten containers stopped by the engine while container-runtime is down,
## from its start until all run again, beside `docker start` of the ten (as root; docs/benchmarks.md).
bench-resume:
	$(XTASK_RELEASE) bench-resume

## Events: a container killed through the engine's API to the DIED event at a signed
## WatchEvents client, p50/p99, beside the engine's own die event (docs/benchmarks.md).
bench-events:
	$(XTASK_RELEASE) bench-events

## Public API: signed unary call latency and throughput beside the same call unauthenticated.
bench-api:
	$(XTASK_RELEASE) bench-api

## The public port under attack: `executor ctl identity` p50/p99 with no attack, then while 1000
## idle connections and a 2000-call bad-signature flood hit it, in one run (docs/benchmarks.md).
bench-doors:
	$(XTASK_RELEASE) bench-doors

## GPoW-1 and the GPoW-2 reference on the CPU: GEMM throughput, prover and validator times, per code path (docs/benchmarks.md).
bench-gpow:
	$(XTASK_RELEASE) bench-gpow

clean:
	$(CARGO) clean
	rm -rf $(VENV) var fuzz/target
