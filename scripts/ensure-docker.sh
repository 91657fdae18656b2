#!/usr/bin/env bash
# Makes sure a Docker engine answers on /var/run/docker.sock: installs `docker.io` from the
# distribution when there is none, starts the daemon when it is not running, waits for it.
set -euo pipefail

if docker info >/dev/null 2>&1; then
    echo "docker: engine is running"
    exit 0
fi
if ! command -v dockerd >/dev/null 2>&1; then
    [ "$(id -u)" = 0 ] || { echo "docker: not installed, and installing needs root" >&2; exit 1; }
    echo "docker: installing docker.io"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null
fi
if ! docker info >/dev/null 2>&1; then
    echo "docker: starting the engine"
    if command -v systemctl >/dev/null 2>&1 && systemctl is-system-running >/dev/null 2>&1; then
        systemctl start docker
    elif command -v service >/dev/null 2>&1 && service docker start >/dev/null 2>&1; then
        :
    else
        mkdir -p /var/log
        nohup dockerd >/var/log/dockerd.log 2>&1 &
    fi
fi
for _ in $(seq 1 60); do
    if docker info >/dev/null 2>&1; then
        echo "docker: engine is running"
        exit 0
    fi
    sleep 1
done
echo "docker: the engine did not start within 60 s; see /var/log/dockerd.log" >&2
exit 1
