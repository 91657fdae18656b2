#!/usr/bin/env bash
# Deploys a release tarball (`cargo xtask dist`) to a server over SSH.
#
#   deploy/deploy.sh -s user@host[:port] [--health-check] [--config FILE] [--dry-run]
#                    [--tarball FILE] [-i KEY] [-o SSH_OPTION]... [--health-port N]
#                    [--health-timeout SECONDS] [--prefix DIR] [--log-dir DIR] [--no-systemd]
#
# Uploads the tarball, verifies its SHA-256 on the server, unpacks it under
# PREFIX/releases/<version>, checks SHA256SUMS, points PREFIX/current and PREFIX/bin at it,
# installs the config (with --config; the server's own is kept otherwise), creates PREFIX/data,
# PREFIX/config and the log directory, installs and enables the systemd unit (or, on a host
# without systemd, runs the launcher in the background with a pid file), and restarts the node.
# With --health-check it waits for `GET :HEALTH_PORT/health` to answer 200 and, if it does
# not, switches back to the previous release (and config) and restarts that.
# --no-systemd runs the launcher in the background even where systemd runs (tests, containers).
set -euo pipefail

usage() {
    sed -n '3,6p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}
die() {
    echo "deploy: error: $*" >&2
    exit 1
}

server="" health_check=0 config="" dry_run=0 tarball="" health_port=50052 health_timeout=60
prefix=/opt/basilica log_dir=/var/log/basilica no_systemd=0
ssh_opts=(-o BatchMode=yes -o ConnectTimeout=10)
while [ $# -gt 0 ]; do
    case "$1" in
        -s|--server) server=${2:-}; shift 2 || usage ;;
        --health-check) health_check=1; shift ;;
        --config) config=${2:-}; shift 2 || usage ;;
        --dry-run) dry_run=1; shift ;;
        --tarball) tarball=${2:-}; shift 2 || usage ;;
        -i|--identity) ssh_opts+=(-i "${2:-}" -o IdentitiesOnly=yes); shift 2 || usage ;;
        -o) ssh_opts+=(-o "${2:-}"); shift 2 || usage ;;
        --health-port) health_port=${2:-}; shift 2 || usage ;;
        --health-timeout) health_timeout=${2:-}; shift 2 || usage ;;
        --prefix) prefix=${2:-}; shift 2 || usage ;;
        --log-dir) log_dir=${2:-}; shift 2 || usage ;;
        --no-systemd) no_systemd=1; shift ;;
        -h|--help) usage ;;
        *) echo "deploy: unknown argument: $1" >&2; usage ;;
    esac
done
[ -n "$server" ] || { echo "deploy: -s user@host[:port] is required" >&2; usage; }
[[ "$health_port" =~ ^[0-9]+$ ]] || die "--health-port must be a port number, not '$health_port'"
[[ "$health_timeout" =~ ^[0-9]+$ ]] || die "--health-timeout must be whole seconds, not '$health_timeout'"

# user@host:port (the port is optional).
target=$server port=22
if [[ "$server" =~ ^(.+):([0-9]+)$ ]]; then
    target=${BASH_REMATCH[1]} port=${BASH_REMATCH[2]}
fi
ssh_opts+=(-p "$port")

if [ -n "$config" ] && [ ! -f "$config" ]; then
    die "config file '$config' not found (--config takes the executor.toml to install)"
fi
here=$(cd "$(dirname "$0")" && pwd)
if [ -z "$tarball" ]; then
    # From the repository (deploy/deploy.sh) or from an unpacked release (deploy.sh at its top).
    for dir in "$here/../target/dist" "$here/.."; do
        found=$(ls -1 "$dir"/executor-*-x86_64-linux.tar.gz 2>/dev/null | sort -V | tail -1 || true)
        [ -n "$found" ] && { tarball=$found; break; }
    done
    [ -n "$tarball" ] || die "no release tarball found: run 'cargo xtask dist' or pass --tarball FILE"
fi
[ -f "$tarball" ] || die "tarball '$tarball' not found"
[ -f "$tarball.sha256" ] || die "checksum file '$tarball.sha256' not found (cargo xtask dist writes it beside the tarball)"
name=$(basename "$tarball" .tar.gz)
release=${name%-x86_64-linux}
release=${release#executor-}
sum=$(cut -d' ' -f1 "$tarball.sha256")
[[ "$sum" =~ ^[0-9a-f]{64}$ ]] || die "'$tarball.sha256' holds no SHA-256"
local_sum=$(sha256sum "$tarball" | cut -d' ' -f1)
[ "$sum" = "$local_sum" ] || die "'$tarball' does not match '$tarball.sha256': rebuild it with 'cargo xtask dist'"

# The connection, with the reason in words when it fails.
probe=$(ssh "${ssh_opts[@]}" "$target" 'echo ok' 2>&1) || {
    case "$probe" in
        *"Permission denied"*|*"Too many authentication failures"*)
            die "$target:$port refused our key (Permission denied): check -i KEY and the server's authorized_keys" ;;
        *"Could not resolve hostname"*)
            die "host of '$server' cannot be resolved: $probe" ;;
        *"Connection refused"*|*"timed out"*|*"No route to host"*|*"Network is unreachable"*|*"Connection closed"*)
            die "$target:$port is unreachable: ${probe##*: }" ;;
        *"Host key verification failed"*)
            die "$target:$port: host key verification failed (add it to known_hosts, or -o StrictHostKeyChecking=accept-new)" ;;
        *) die "cannot connect to $target:$port: $probe" ;;
    esac
}

plan() {
    echo "deploy: $name to $target:$port"
    echo "  upload $tarball ($(du -h "$tarball" | cut -f1)), sha256 $sum"
    echo "  install under $prefix/releases/$release, logs in $log_dir"
    if [ -n "$config" ]; then echo "  config $config -> $prefix/config/executor.toml"; else echo "  keep the server's $prefix/config/executor.toml"; fi
    if [ "$no_systemd" = 1 ]; then echo "  restart as a background launcher (--no-systemd)"; else echo "  restart (systemd unit basilica-executor, or a background launcher without systemd)"; fi
    [ "$health_check" = 1 ] && echo "  wait up to ${health_timeout}s for GET :$health_port/health = 200, else roll back"
    return 0
}
plan
if [ "$dry_run" = 1 ]; then
    echo "deploy: dry run: nothing was changed"
    exit 0
fi

started=$(date +%s)
tmp=$(ssh "${ssh_opts[@]}" "$target" 'mktemp -d /tmp/basilica-deploy.XXXXXX')
cleanup() { ssh "${ssh_opts[@]}" "$target" "rm -rf '$tmp'" 2>/dev/null || true; }
trap cleanup EXIT
ssh "${ssh_opts[@]}" "$target" "cat > '$tmp/$name.tar.gz'" < "$tarball" || die "upload to $target failed"
if [ -n "$config" ]; then
    ssh "${ssh_opts[@]}" "$target" "cat > '$tmp/executor.toml'" < "$config" || die "config upload to $target failed"
fi

# Everything on the server runs in one script; its arguments travel as quoted words.
remote_args=$(printf '%q ' "$tmp" "$name" "$release" "$sum" "$prefix" "$log_dir" "$health_check" "$health_port" "$health_timeout" "$no_systemd")
ssh "${ssh_opts[@]}" "$target" "bash -s -- $remote_args" <<'REMOTE'
set -euo pipefail
tmp=$1 name=$2 release=$3 sum=$4 prefix=$5 log_dir=$6 health_check=$7 health_port=$8 health_timeout=$9 no_systemd=${10}
say() { echo "deploy[remote]: $*"; }
fail() { echo "deploy[remote]: error: $*" >&2; exit 1; }
sudo=""
if [ "$(id -u)" != 0 ]; then
    sudo -n true 2>/dev/null || fail "$(id -un) is not root and has no password-less sudo"
    sudo="sudo -n"
fi
cd "$tmp"
echo "$sum  $name.tar.gz" | sha256sum -c --quiet - || fail "the uploaded tarball's checksum does not match: upload corrupted"
say "checksum verified"

$sudo mkdir -p "$prefix/releases" "$prefix/config" "$prefix/data" "$log_dir"
$sudo chmod 0700 "$prefix/data"
dir="$prefix/releases/$release"
$sudo rm -rf "$dir.new"
$sudo mkdir -p "$dir.new"
$sudo tar -xzf "$name.tar.gz" -C "$dir.new" --strip-components=1 --no-same-owner
(cd "$dir.new" && sha256sum -c --quiet SHA256SUMS) || fail "the unpacked files do not match SHA256SUMS"
previous=$(readlink "$prefix/current" 2>/dev/null || true)
if [ "$previous" = "$dir" ]; then
    # Redeploying the running version: keep a copy to roll back to.
    $sudo rm -rf "$dir.prev" && $sudo mv "$dir" "$dir.prev"
    previous="$dir.prev"
fi
$sudo rm -rf "$dir" && $sudo mv "$dir.new" "$dir"
if [ -f "$tmp/executor.toml" ]; then
    [ -f "$prefix/config/executor.toml" ] && $sudo cp -p "$prefix/config/executor.toml" "$prefix/config/executor.toml.previous"
    $sudo install -m 0640 "$tmp/executor.toml" "$prefix/config/executor.toml"
    say "config installed at $prefix/config/executor.toml"
elif [ ! -f "$prefix/config/executor.toml" ]; then
    $sudo rm -rf "$dir"
    fail "no config at $prefix/config/executor.toml on this server: pass --config FILE (template: $name/config/executor.correct.toml)"
fi

use_systemd=0
[ "$no_systemd" = 0 ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null && use_systemd=1
pidfile="$prefix/executor.pid"
stop_node() {
    if [ "$use_systemd" = 1 ]; then
        $sudo systemctl stop basilica-executor || true
    elif [ -f "$pidfile" ]; then
        pid=$(cat "$pidfile")
        if kill -0 "$pid" 2>/dev/null; then
            $sudo kill -TERM "$pid"
            for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -0 "$pid" 2>/dev/null && { say "launcher $pid ignored SIGTERM; killing it"; $sudo kill -KILL "$pid"; }
        fi
        $sudo rm -f "$pidfile"
    fi
}
start_node() {
    if [ "$use_systemd" = 1 ]; then
        $sudo systemctl restart basilica-executor
    else
        # Only the launcher goes to the background, with no descriptor of this SSH session.
        $sudo bash -c "cd '$prefix' || exit 1; setsid nohup '$prefix/bin/executor' --server --config '$prefix/config/executor.toml' >>'$log_dir/executor.out' 2>&1 </dev/null & echo \$! > '$pidfile'"
    fi
}
activate() {
    $sudo ln -sfn "$1" "$prefix/current.new" && $sudo mv -T "$prefix/current.new" "$prefix/current"
    $sudo ln -sfn current/bin "$prefix/bin.new" && $sudo mv -T "$prefix/bin.new" "$prefix/bin"
}
healthy() {
    local deadline=$(( $(date +%s) + health_timeout ))
    while [ "$(date +%s)" -lt "$deadline" ]; do
        if [ "$use_systemd" = 0 ] && ! kill -0 "$(cat "$pidfile" 2>/dev/null || echo 0)" 2>/dev/null; then
            say "the launcher exited; last lines of $log_dir/executor.out:"
            tail -5 "$log_dir/executor.out" 2>/dev/null | sed 's/^/    /' >&2
            return 1
        fi
        if { exec 3<>"/dev/tcp/127.0.0.1/$health_port"; } 2>/dev/null; then
            printf 'GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&3
            status=$(head -1 <&3 || true)
            exec 3<&- 3>&-
            # 200, and the launcher just started still runs a second later (not an old one
            # answering on the port while the new one failed to bind it).
            case "$status" in
                *" 200 "*)
                    sleep 1
                    [ "$use_systemd" = 1 ] && $sudo systemctl is-active --quiet basilica-executor && return 0
                    [ "$use_systemd" = 0 ] && kill -0 "$(cat "$pidfile" 2>/dev/null || echo 0)" 2>/dev/null && return 0
                    ;;
            esac
        fi
        sleep 1
    done
    return 1
}

stop_node
activate "$dir"
if [ "$use_systemd" = 1 ]; then
    sed "s#/opt/basilica#$prefix#g" "$dir/systemd/basilica-executor.service" | $sudo tee /etc/systemd/system/basilica-executor.service >/dev/null
    $sudo systemctl daemon-reload
    $sudo systemctl enable basilica-executor >/dev/null 2>&1
    say "systemd unit basilica-executor installed and enabled"
else
    say "no systemd on this server: the launcher runs in the background (pid file $pidfile, output $log_dir/executor.out)"
fi
start_node
say "started $release"
if [ "$health_check" = 1 ]; then
    if healthy; then
        say "health check passed: GET :$health_port/health = 200"
    else
        say "health check failed: no 200 from GET :$health_port/health within ${health_timeout}s"
        stop_node
        if [ -n "$previous" ] && [ -d "$previous" ]; then
            if [ -f "$prefix/config/executor.toml.previous" ] && [ -f "$tmp/executor.toml" ]; then
                $sudo cp -p "$prefix/config/executor.toml.previous" "$prefix/config/executor.toml"
            fi
            activate "$previous"
            start_node
            if healthy; then
                fail "rolled back to $(basename "$previous"), which is healthy again"
            fi
            fail "rolled back to $(basename "$previous"), but it is not healthy either"
        fi
        fail "no previous release to roll back to; the node is stopped"
    fi
fi
$sudo rm -rf "$dir.prev"
REMOTE
echo "deploy: $name deployed to $target:$port in $(( $(date +%s) - started ))s"
