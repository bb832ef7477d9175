#!/usr/bin/env bash
# Builds Kiln and the example services, starts a node with the Counter and Steps examples
# registered, prints curl lines to try, and stops everything on Ctrl-C.
#   Ports: ingress 8080, admin 9070, Counter service 9080, Steps service 9081 (override with
#   KILN_INGRESS_ADDR, KILN_ADMIN_ADDR, COUNTER_PORT, STEPS_PORT). Data: ./kiln-data (KILN_DATA_DIR).
set -euo pipefail
cd "$(dirname "$0")/.."

ingress=${KILN_INGRESS_ADDR:-127.0.0.1:8080}
admin=${KILN_ADMIN_ADDR:-127.0.0.1:9070}
counter_port=${COUNTER_PORT:-9080}
steps_port=${STEPS_PORT:-9081}
export KILN_INGRESS_ADDR=$ingress KILN_ADMIN_ADDR=$admin

echo "==> building the Kotlin SDK and examples (Maven)"
mvn -B -q -Dkotlin.compiler.daemon=false -f examples/pom.xml install -DskipTests
echo "==> building kiln (cargo, release)"
cargo build --release --quiet

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

PORT=$counter_port java -jar examples/counter/target/counter.jar & pids+=($!)
PORT=$steps_port java -jar examples/steps/target/steps.jar & pids+=($!)
target/release/kiln serve & pids+=($!)

wait_for() { for _ in $(seq 1 100); do curl -sf -o /dev/null "$1" && return 0; sleep 0.2; done; echo "timed out waiting for $1" >&2; exit 1; }
wait_for "http://$admin/health"
wait_for "http://127.0.0.1:$counter_port/discover"
wait_for "http://127.0.0.1:$steps_port/discover"
for port in "$counter_port" "$steps_port"; do
  curl -sf -X POST "http://$admin/deployments" -H 'content-type: application/json' \
    -d "{\"uri\":\"http://127.0.0.1:$port\"}" > /dev/null
done

cat <<MSG

Kiln is running (ingress http://$ingress, admin http://$admin) with Counter and Steps registered.
Try:
  curl -X POST http://$ingress/Counter/my-key/add -d 1
  curl -X POST http://$ingress/Counter/my-key/get
  curl -X POST http://$ingress/Steps/threeStep -d '"hello"'
Inspect an invocation (id from the x-kiln-invocation-id response header):
  curl http://$admin/invocations/<id>
Press Ctrl-C to stop.
MSG
wait -n "${pids[@]}"
