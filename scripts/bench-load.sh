#!/usr/bin/env bash
# Load benchmark of `sidecar-injector serve` against two baselines on the same stack (see
# docs/performance.md for what they are and for the last results).
#
# The real server (release build) and the two baselines run side by side, all pinned to core 0;
# the load generator runs on core 1. Each cell (protocol x body x concurrency) is measured in
# rounds, and within a round the three servers take turns (rotating who goes first), so a
# machine whose speed drifts over minutes hurts all three alike. HTTP/1.1 keep-alive load comes
# from wrk, HTTP/2 load (one connection, N concurrent streams, as the API server multiplexes)
# from h2load.
#
# Usage: scripts/bench-load.sh [--quick] [--rounds N] [--duration SECONDS] [--out DIR] [--before BIN]
#   --quick        one round of 2 s per run, 3 start-ups (about 3 minutes)
#   default        3 rounds of 5 s per run, 10 start-ups (about 12 minutes)
#   --before BIN   also serve with BIN (the release binary of an earlier commit) and take it in
#                  turn with the others, for a before/after comparison on the same load
# Results: DIR/results.tsv (one line per run), DIR/summary.md; DIR defaults to a new temp dir.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

ROUNDS=3
DURATION=5
STARTS=10
OUT=""
BEFORE_BIN=""
while [ $# -gt 0 ]; do
    case "$1" in
    --quick) ROUNDS=1 DURATION=2 STARTS=3 ;;
    --rounds) ROUNDS="$2"; shift ;;
    --duration) DURATION="$2"; shift ;;
    --out) OUT="$2"; shift ;;
    --before) BEFORE_BIN="$2"; shift ;;
    -h | --help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done

SERVER_CPU=0
CLIENT_CPU=1
if [ "$(nproc)" -lt 2 ]; then
    echo "needs at least 2 cores (server and load generator on different ones)" >&2
    exit 1
fi

# ---- tools -------------------------------------------------------------------------------------
missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v h2load >/dev/null || missing+=(nghttp2-client)
command -v jq >/dev/null || missing+=(jq)
command -v curl >/dev/null || missing+=(curl)
command -v taskset >/dev/null || missing+=(util-linux)
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]}"
    (apt-get update -qq && apt-get install -y -qq "${missing[@]}") >/dev/null
fi

# ---- build -------------------------------------------------------------------------------------
echo "== building (release)"
cargo build --release --locked --bin sidecar-injector
TARGET_DIR="$(cargo metadata --format-version 1 --no-deps | jq -r .target_directory)"
OURS_BIN="$TARGET_DIR/release/sidecar-injector"
# The bench profile is the release profile; the executable's name carries a hash.
HELPER="$(cargo bench --locked --bench baseline_server --no-run --message-format=json 2>/dev/null |
    jq -r 'select(.reason == "compiler-artifact" and .target.name == "baseline_server") | .executable' |
    tail -n 1)"
[ -x "$HELPER" ] || { echo "cannot find the baseline_server executable" >&2; exit 1; }

WORK="${OUT:-$(mktemp -d /tmp/bench-load.XXXXXX)}"
mkdir -p "$WORK/responses"
echo "== results in $WORK"

"$HELPER" certs "$WORK/certs"
"$HELPER" body hello >"$WORK/hello.json"
"$HELPER" body large >"$WORK/large.json"

# Six local ports from BENCH_PORT_BASE on (admin, ours, ceiling, parse, before and its admin);
# they must be free.
BASE="${BENCH_PORT_BASE:-27440}"
ADMIN_PORT=$BASE
OURS_PORT=$((BASE + 1))
CEILING_PORT=$((BASE + 2))
PARSE_PORT=$((BASE + 3))
BEFORE_PORT=$((BASE + 4))
BEFORE_ADMIN_PORT=$((BASE + 5))
for port in "$ADMIN_PORT" "$OURS_PORT" "$CEILING_PORT" "$PARSE_PORT" "$BEFORE_PORT" "$BEFORE_ADMIN_PORT"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        echo "port $port is in use; set BENCH_PORT_BASE to another range" >&2
        exit 1
    fi
done
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    # The real server keeps serving through its shutdown grace; wait until the ports are free.
    for pid in "${PIDS[@]}"; do
        while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
    done
}
trap cleanup EXIT

wait_https() { # port: until the port answers a TLS handshake
    for _ in $(seq 1 200); do
        if curl -s -o /dev/null --cacert "$WORK/certs/ca.crt" "https://localhost:$1/" 2>/dev/null; then
            return 0
        fi
        sleep 0.05
    done
    echo "nothing answers on port $1" >&2
    return 1
}

# ---- servers -----------------------------------------------------------------------------------
echo "== starting the servers on core $SERVER_CPU"
# serve_injector NAME BIN PORT ADMIN_PORT: an injector build on the server core, until it answers.
# Log at the default level (one line per review) to a file, as a container's log would.
serve_injector() {
    taskset -c "$SERVER_CPU" "$2" serve --addr "127.0.0.1:$3" --admin-addr "127.0.0.1:$4" \
        --tls-cert-file "$WORK/certs/tls.crt" --tls-key-file "$WORK/certs/tls.key" \
        >"$WORK/$1.log" 2>&1 &
    SERVED_PID=$!
    PIDS+=("$SERVED_PID")
    wait_https "$3"
}
serve_injector ours "$OURS_BIN" "$OURS_PORT" "$ADMIN_PORT"
OURS_PID=$SERVED_PID
if [ -n "$BEFORE_BIN" ]; then
    serve_injector before "$BEFORE_BIN" "$BEFORE_PORT" "$BEFORE_ADMIN_PORT"
    BEFORE_PID=$SERVED_PID
fi

# The ceiling answers with the real server's answer to the same body, and each answer is checked.
for body in hello large; do
    curl -sS --fail --cacert "$WORK/certs/ca.crt" -H 'Content-Type: application/json' \
        --data-binary "@$WORK/$body.json" "https://localhost:$OURS_PORT/inject?body=$body" \
        >"$WORK/responses/$body.json"
    jq -e '.response.allowed == true and .response.patchType == "JSONPatch"
        and ((.response.patch | @base64d | fromjson) as $p
             | ($p | length) > 0 and ($p | tostring | contains("istio-proxy")))' \
        "$WORK/responses/$body.json" >/dev/null ||
        { echo "unexpected answer of the server for $body" >&2; exit 1; }
    echo "   $body: request $(wc -c <"$WORK/$body.json") bytes, answer $(wc -c <"$WORK/responses/$body.json") bytes, patch of $(jq '.response.patch | @base64d | fromjson | length' "$WORK/responses/$body.json") operations"
done

# Over HTTP/1.1 every request is a new replica (its own uid and token volume name, see post.lua);
# h2load sends one fixed body, that is the same review again and again.
# hello-distinct: the hello body with another `app` label on every request, as if every pod were
# the first of a new workload. The template reads that label, so no earlier render or answer is
# reused: the injector's worst case. HTTP/1.1 only; the ceiling answers it with the hello answer
# (it reads its answers when it starts).
cp "$WORK/responses/hello.json" "$WORK/responses/hello-distinct.json"

taskset -c "$SERVER_CPU" "$HELPER" serve ceiling "127.0.0.1:$CEILING_PORT" \
    "$WORK/certs/tls.crt" "$WORK/certs/tls.key" "$WORK/responses" >"$WORK/ceiling.log" 2>&1 &
CEILING_PID=$!
PIDS+=("$CEILING_PID")
taskset -c "$SERVER_CPU" "$HELPER" serve parse "127.0.0.1:$PARSE_PORT" \
    "$WORK/certs/tls.crt" "$WORK/certs/tls.key" >"$WORK/parse.log" 2>&1 &
PARSE_PID=$!
PIDS+=("$PARSE_PID")
wait_https "$CEILING_PORT"
wait_https "$PARSE_PORT"
for port in "$CEILING_PORT" "$PARSE_PORT"; do
    for body in hello large; do
        curl -sS --fail --cacert "$WORK/certs/ca.crt" -H 'Content-Type: application/json' \
            --data-binary "@$WORK/$body.json" "https://localhost:$port/inject?body=$body" |
            jq -e '.response.allowed == true and (.response.patch | length) > 0' >/dev/null ||
            { echo "unexpected answer of the baseline on $port for $body" >&2; exit 1; }
    done
done

# ---- one run -----------------------------------------------------------------------------------
cpu_ticks() { # pid: user + system time in clock ticks (fields 14 and 15 of /proc/PID/stat)
    sed 's/^.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'
}
TICK_US=$((1000000 / $(getconf CLK_TCK)))

cat >"$WORK/post.lua" <<'EOF'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = assert(io.open(os.getenv("BENCH_BODY"), "rb"))
wrk.body = f:read("*a")
f:close()
-- Every request is a new pod, as the API server sends them: its own review uid and its own
-- service-account token volume name (kube-api-access- and five characters of the alphabet the
-- API server draws from, everywhere the body names it). BENCH_VARY=workload also gives every pod
-- another `app` label, as if each were the first pod of a new workload. The requests are made
-- before the run and sent in turn (BENCH_COUNT of them, more than the injector remembers), so
-- the load generator does no string work and no garbage collection while it measures.
local vary = os.getenv("BENCH_VARY")
if vary == "replica" or vary == "workload" then
    local alphabet = "bcdfghjklmnpqrstvwxz2456789"
    local count = tonumber(os.getenv("BENCH_COUNT") or "1000")
    local prepared = {}
    for i = 1, count do
        local n, suffix = i, ""
        for _ = 1, 5 do
            local d = n % 27
            suffix = suffix .. alphabet:sub(d + 1, d + 1)
            n = math.floor(n / 27)
        end
        local body = wrk.body:gsub("kube%-api%-access%-x7k2p", "kube-api-access-" .. suffix)
        body = body:gsub("42010a800002", string.format("%012x", i), 1)
        if vary == "workload" then
            body = body:gsub('"app":"hello"', '"app":"hello-' .. i .. '"', 1)
        end
        prepared[i] = wrk.format(nil, nil, nil, body)
    end
    local sent = 0
    function request()
        sent = sent + 1
        return prepared[(sent - 1) % count + 1]
    end
end
function done(summary, latency, requests)
    local e = summary.errors
    io.write(string.format("RESULT %d %d %d %d %d\n", summary.requests, summary.duration,
        latency:percentile(50), latency:percentile(99),
        e.connect + e.read + e.write + e.status + e.timeout))
end
EOF

# run PROTO BODY CONC SERVER PORT PID -> prints "rps p50_us p99_us errors requests cpu_us_per_req"
run() {
    local proto=$1 body=$2 conc=$3 port=$5 pid=$6
    local url="https://127.0.0.1:$port/inject?body=$body"
    local before after requests seconds p50 p99 errors
    before=$(cpu_ticks "$pid")
    if [ "$proto" = h1 ]; then
        local line
        local out
        local file=$body vary=replica count=1000
        [ "$body" = hello-distinct ] && file=hello vary=workload
        [ "$body" = large ] && count=100 # 116 KB each
        out=$(BENCH_BODY="$WORK/$file.json" BENCH_VARY=$vary BENCH_COUNT=$count client \
            taskset -c "$CLIENT_CPU" \
            wrk -t1 -c"$conc" -d"${DURATION}s" --timeout 5s -s "$WORK/post.lua" "$url")
        read -r _ requests seconds p50 p99 errors <<<"$(grep '^RESULT' <<<"$out")"
        seconds=$(awk -v us="$seconds" 'BEGIN { print us / 1e6 }')
    else
        local out log="$WORK/h2.log"
        rm -f "$log" # h2load appends
        out=$(client taskset -c "$CLIENT_CPU" h2load -t1 -c1 -m"$conc" -D"$DURATION" \
            -d "$WORK/$body.json" -H 'Content-Type: application/json' --log-file="$log" "$url")
        requests=$(awk '$1 == "requests:" { print $6 }' <<<"$out")
        seconds=$(awk '$1 == "finished" { sub(/s,$/, "", $3); print $3 }' <<<"$out")
        # Requests done without a 2xx answer, and streams that failed.
        errors=$(awk '$1 == "requests:" { done = $6; errored = $12 }
                      $1 == "status" { ok = $3 } END { print done - ok + errored }' <<<"$out")
        read -r p50 p99 < <(cut -f3 "$log" | sort -n |
            awk '{ v[NR] = $1 } END { i = int(NR * 0.5); j = int(NR * 0.99);
                 if (i < 1) i = 1; if (j < 1) j = 1; print v[i], v[j] }')
    fi
    after=$(cpu_ticks "$pid")
    local client_ticks
    client_ticks=$(awk '$1 == "CLIENT_TICKS" { print $2 }' <<<"$out")
    awk -v r="$requests" -v s="$seconds" -v p50="$p50" -v p99="$p99" -v e="$errors" \
        -v t=$((after - before)) -v c="$client_ticks" -v tick="$TICK_US" \
        'BEGIN { printf "%.1f\t%d\t%d\t%d\t%d\t%.1f\t%.0f\n", r / s, p50, p99, e, r,
                 (r > 0 ? t * tick / r : 0), c * tick / 1e6 / s * 100 }'
}

# client CMD...: runs the load generator, then prints its CPU time (the children's user and
# system ticks of the shell that waited for it), to see when the client core is the limit.
client() {
    bash -c '"$@"; read -ra s </proc/$$/stat; echo "CLIENT_TICKS $((s[15] + s[16]))"' client "$@"
}

# ---- warm-up -----------------------------------------------------------------------------------
echo "== warm-up"
SERVERS=("ours $OURS_PORT $OURS_PID" "ceiling $CEILING_PORT $CEILING_PID" "parse $PARSE_PORT $PARSE_PID")
[ -n "$BEFORE_BIN" ] && SERVERS+=("before $BEFORE_PORT $BEFORE_PID")
for s in "${SERVERS[@]}"; do
    read -r name port pid <<<"$s"
    DURATION=2 run h1 large 16 "$name" "$port" "$pid" >/dev/null
done

# ---- the matrix --------------------------------------------------------------------------------
RESULTS="$WORK/results.tsv"
printf 'proto\tbody\tconc\tround\tserver\trps\tp50_us\tp99_us\terrors\trequests\tcpu_us_per_req\tclient_cpu_pct\n' >"$RESULTS"
N=${#SERVERS[@]}
echo "== load: $ROUNDS round(s) of ${DURATION}s per run"
for proto in h1 h2; do
    for body in hello hello-distinct large; do
        [ "$proto" = h2 ] && [ "$body" = hello-distinct ] && continue
        for conc in 1 16 64; do
            for round in $(seq 1 "$ROUNDS"); do
                for k in $(seq 0 $((N - 1))); do
                    read -r name port pid <<<"${SERVERS[$(((round + k - 1) % N))]}"
                    line=$(run "$proto" "$body" "$conc" "$name" "$port" "$pid")
                    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$proto" "$body" "$conc" "$round" "$name" "$line" >>"$RESULTS"
                    printf '   %-3s %-6s c=%-3s round %s %-8s %s\n' "$proto" "$body" "$conc" "$round" "$name" "$line"
                done
            done
        done
    done
done

# ---- memory, counters --------------------------------------------------------------------------
hwm() { awk '$1 == "VmHWM:" { printf "%.1f MiB", $2 / 1024 }' "/proc/$1/status"; }
RSS_OURS=$(hwm "$OURS_PID")
RSS_CEILING=$(hwm "$CEILING_PID")
RSS_PARSE=$(hwm "$PARSE_PID")
[ -n "$BEFORE_BIN" ] && RSS_BEFORE=$(hwm "$BEFORE_PID")
METRICS=$(curl -s "http://127.0.0.1:$ADMIN_PORT/metrics")
metric() { awk -v m="$1" '$1 ~ "^"m { s += $2 } END { print s + 0 }' <<<"$METRICS"; }
INJECTED=$(metric sidecar_injection_success_total)
SKIPPED=$(metric sidecar_injection_skip_total)
# By reason: a load generator that stops mid-upload leaves bodies that cannot be read.
FAILED=$(awk '$1 ~ /^sidecar_injection_failure_total/ && $2 > 0 { printf "%s%s %s", sep, $1, $2; sep = ", " }' <<<"$METRICS")
cleanup
PIDS=()

# ---- start-up time -----------------------------------------------------------------------------
echo "== start-up: $STARTS starts until /readyz answers 200"
STARTUP=$("$HELPER" startup "$STARTS" "127.0.0.1:$ADMIN_PORT" -- taskset -c "$SERVER_CPU" \
    "$OURS_BIN" serve --addr "127.0.0.1:$OURS_PORT" --admin-addr "127.0.0.1:$ADMIN_PORT" \
    --tls-cert-file "$WORK/certs/tls.crt" --tls-key-file "$WORK/certs/tls.key" | tail -n 1)

# ---- summary -----------------------------------------------------------------------------------
{
    echo "Date: $(date -u '+%Y-%m-%d %H:%M UTC'); commit $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src Cargo.toml Cargo.lock || echo ' (modified)')"
    echo "Machine: $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p' | head -n 1), kernel $(uname -r)"
    echo "Command: scripts/bench-load.sh --rounds $ROUNDS --duration $DURATION; $ROUNDS round(s) of ${DURATION} s per run"
    echo "Bodies: hello $(wc -c <"$WORK/hello.json") bytes, large $(wc -c <"$WORK/large.json") bytes"
    echo
    "$HELPER" summarize "$RESULTS"
    echo
    echo "Peak RSS (VmHWM) after all runs: ours $RSS_OURS, ceiling $RSS_CEILING, parse $RSS_PARSE"
    echo "Our counters: $INJECTED injected, $SKIPPED skipped; failures: ${FAILED:-none}"
    echo "Start-up to ready ($STARTS starts): $STARTUP"
    if [ -n "$BEFORE_BIN" ]; then
        echo
        echo "Before ($BEFORE_BIN, peak RSS $RSS_BEFORE) and after (ours), taken in turn; medians over the rounds:"
        echo
        echo "| protocol | body | conc. | before req/s | ours req/s | before CPU µs/req | ours CPU µs/req |"
        echo "| --- | --- | --- | --- | --- | --- | --- |"
        awk -F'\t' 'NR > 1 && ($5 == "ours" || $5 == "before") {
                key = $1 "|" $2 "|" $3; if (!(key in seen)) { seen[key] = 1; order[++n] = key }
                k = key "|" $5; c = ++count[k]; rps[k, c] = $6; cpu[k, c] = $11 }
            function median(arr, k, m,   i, j, t, v) {
                for (i = 1; i <= m; i++) v[i] = arr[k, i]
                for (i = 1; i <= m; i++) for (j = i + 1; j <= m; j++) if (v[j] < v[i]) { t = v[i]; v[i] = v[j]; v[j] = t }
                return m % 2 ? v[(m + 1) / 2] : (v[m / 2] + v[m / 2 + 1]) / 2 }
            END { for (i = 1; i <= n; i++) { key = order[i]; split(key, f, "|")
                b = key "|before"; o = key "|ours"
                printf "| %s | %s | %s | %.0f | %.0f | %.1f | %.1f |\n", f[1], f[2], f[3],
                    median(rps, b, count[b]), median(rps, o, count[o]),
                    median(cpu, b, count[b]), median(cpu, o, count[o]) } }' "$RESULTS"
    fi
} | tee "$WORK/summary.md"
