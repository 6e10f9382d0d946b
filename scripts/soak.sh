#!/usr/bin/env bash
# Soak and fault run against the real `serve` (release build) on loopback.
#
# Keep-alive HTTP/1.1 load (examples/soak_load.rs) for SECONDS while:
#   - the certificate files are rotated twice, the way kubelet updates a Secret volume (a new
#     timestamped directory, then the `..data` symlink swapped in one rename);
#   - the config dir is changed to another valid config, then broken, then valid again;
#   - a replacement server is started on another port, the load generator is pointed at it, and
#     the first server gets SIGTERM and drains.
# Prints the load generator's counts, the reload metrics, and each server's RSS early and late.
#
# Usage: scripts/soak.sh [SECONDS (default 360)] [CONNECTIONS (default 8)]
# Needs openssl and curl. Ports 19443/19080 and 19444/19081 on 127.0.0.1 must be free.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

seconds="${1:-360}"
connections="${2:-8}"
if [ "$seconds" -lt 300 ]; then
    echo "the fault timeline needs at least 300 seconds" >&2
    exit 2
fi

cargo build --release --locked --bin sidecar-injector --example soak_load
target="${CARGO_TARGET_DIR:-target}/release"
bin="$target/sidecar-injector"
load="$target/examples/soak_load"

work="$(mktemp -d)"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

log() { printf '[%4ss] %s\n' "$SECONDS" "$*"; }

# --- certificates: one CA, serving certificates issued from it, in a Secret-like volume -------
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=soak-ca \
    -keyout "$work/ca.key" -out "$work/ca.crt" 2>/dev/null
mkdir -p "$work/certs"
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >"$work/san.ext"
issue() {
    local version="$1" dir="$work/certs/..$(date +%Y_%m_%d_%H_%M_%S.%N)"
    mkdir -p "$dir"
    openssl req -newkey rsa:2048 -nodes -subj "/CN=soak-$version" \
        -keyout "$dir/tls.key" -out "$work/leaf.csr" 2>/dev/null
    openssl x509 -req -in "$work/leaf.csr" -CA "$work/ca.crt" -CAkey "$work/ca.key" \
        -set_serial "$version" -days 2 -extfile "$work/san.ext" -out "$dir/tls.crt" 2>/dev/null
    ln -sfn "$(basename "$dir")" "$work/certs/..data_tmp"
    mv -T "$work/certs/..data_tmp" "$work/certs/..data"
    ln -sfn ..data/tls.crt "$work/certs/tls.crt"
    ln -sfn ..data/tls.key "$work/certs/tls.key"
}
issue 1

# The serial of the certificate a new connection gets now.
served_serial() {
    openssl s_client -connect "127.0.0.1:$1" -servername localhost </dev/null 2>/dev/null |
        openssl x509 -noout -serial 2>/dev/null | cut -d= -f2
}

# --- config dir: the chart's default files under the ConfigMap's key names --------------------
files=charts/sidecar-injector/files
mkdir -p "$work/config"
# `config` holds its templates inline, as the chart renders it.
{
    cat "$files/config.yaml"
    printf 'templates:\n  sidecar: |\n'
    sed 's/^\(.\)/    \1/' "$files/templates/sidecar.yaml.j2"
} >"$work/config/config"
cp "$files/values.yaml" "$work/config/values"
cp "$files/mesh.yaml" "$work/config/mesh"

start_server() {
    local port="$1" admin="$2" name="$3"
    "$bin" serve --addr "127.0.0.1:$port" --admin-addr "127.0.0.1:$admin" \
        --tls-cert-file "$work/certs/tls.crt" --tls-key-file "$work/certs/tls.key" \
        --config-dir "$work/config" --reload-interval 1 \
        --shutdown-grace 5 --drain-timeout 10 --log-level warn \
        >"$work/$name.log" 2>&1 &
    pids+=($!)
    for _ in $(seq 100); do
        curl -sf "http://127.0.0.1:$admin/readyz" >/dev/null && return 0
        sleep 0.1
    done
    echo "server $name did not become ready:" >&2
    cat "$work/$name.log" >&2
    exit 1
}

rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
metric() { curl -s "http://127.0.0.1:$1/metrics" | grep -E "^sidecar_injection_($2)" || true; }

at() { # wait until second $1 of the run
    local now=$((SECONDS - t0))
    [ "$1" -gt "$now" ] && sleep $(($1 - now))
    return 0
}

start_server 19443 19080 a
pid_a="${pids[-1]}"
echo "127.0.0.1:19443" >"$work/addr"
t0=$SECONDS
log "server A (pid $pid_a) ready; load: $connections keep-alive connections for ${seconds}s"
"$load" "$work/addr" "$work/ca.crt" "$seconds" "$connections" >"$work/load.json" &
pid_load=$!

at 15
rss_a_early=$(rss_kb "$pid_a")
log "A RSS after warm-up: ${rss_a_early} kB"

at 60
issue 2
log "certificate rotated (serial 2)"
at 64
log "A now serves serial $(served_serial 19443)"

at 90
printf '\n# soak: a valid change\nsoakGeneration: 2\n' >>"$work/config/values"
log "config changed (valid)"
at 120
cp "$work/config/config" "$work/config/config.good"
printf 'policy: [\n' >"$work/config/config"
log "config broken"
at 150
mv "$work/config/config.good" "$work/config/config"
printf '\n# soak: valid again\nsoakGeneration: 3\n' >>"$work/config/values"
log "config valid again"

at 180
issue 3
log "certificate rotated (serial 3)"
at 184
log "A now serves serial $(served_serial 19443)"

late=$((seconds - 120))
at "$late"
rss_a_late=$(rss_kb "$pid_a")
log "A RSS before the switch: ${rss_a_late} kB"
log "A metrics:"
metric 19080 'requests_total|success_total|skip_total|failure_total|config_reloads_total|cert_reloads_total' | sed 's/^/    /'

start_server 19444 19081 b
pid_b="${pids[-1]}"
echo "127.0.0.1:19444" >"$work/addr"
kill -TERM "$pid_a"
log "server B (pid $pid_b) ready, load pointed at it, SIGTERM to A"
status_a=0
wait "$pid_a" || status_a=$?
log "A exited with status $status_a"

at $((late + 20))
rss_b_early=$(rss_kb "$pid_b")
log "B RSS after taking the load: ${rss_b_early} kB"

wait "$pid_load"
rss_b_late=$(rss_kb "$pid_b")
log "B RSS at the end: ${rss_b_late} kB"
log "B metrics:"
metric 19081 'requests_total|success_total|skip_total|failure_total|config_reloads_total|cert_reloads_total' | sed 's/^/    /'
kill -TERM "$pid_b"
wait "$pid_b" || true

echo "== load generator"
cat "$work/load.json"
echo "== RSS (kB): A early $rss_a_early, A late $rss_a_late; B early $rss_b_early, B late $rss_b_late"
echo "== warnings and errors logged by the servers"
sed 's/\x1b\[[0-9;]*m//g' "$work/a.log" "$work/b.log" | grep -E 'WARN|ERROR' | cut -c1-200 | sort | uniq -c | sort -rn | head -20 || true
