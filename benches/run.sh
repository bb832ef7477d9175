#!/usr/bin/env bash
# One command for the load benchmark (see benches/README.md):
#   builds kiln (release), the load tool and the Kotlin jars; starts kiln on a temp data dir and
#   free ports, starts counter.jar and steps.jar, registers both, runs the load tool, prints the
#   table, and stops every process it started (trap on EXIT, kill by PID).
#
# Usage: benches/run.sh [extra load-tool args, e.g. --seconds 10 --concurrency 1,16,64]
# Env:   BENCH_SECONDS (default 5), BENCH_WARMUP (default 1), SKIP_BUILD=1 (reuse builds),
#        KEEP_BENCH_DIR=1 (keep the temp dir with data and logs), JAVA_OPTS (for both JVMs).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
BENCH_SECONDS="${BENCH_SECONDS:-5}"
BENCH_WARMUP="${BENCH_WARMUP:-1}"

WORK="$(mktemp -d -t kiln-bench-XXXXXX)"
PIDS=()

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
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

# wait_http URL PID WHAT: poll URL until 200, failing if PID exits or after 60 s.
wait_http() {
    local url="$1" pid="$2" what="$3"
    for _ in $(seq 1 600); do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "run.sh: $what (pid $pid) exited during start-up" >&2
            return 1
        fi
        if curl -fsS -o /dev/null --max-time 2 "$url" 2>/dev/null; then
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
    --seconds "$BENCH_SECONDS" --warmup "$BENCH_WARMUP" "$@"
