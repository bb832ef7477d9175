#!/usr/bin/env bash
# Builds Kiln and the example services, starts a three-node Kiln cluster with nginx in front,
# registers the Counter and Saga examples, prints lines to try, and stops everything (by PID)
# on Ctrl-C.
#   Nodes n1..n3: ingress 127.0.0.1:8081-8083, admin 9071-9073, peer 7071-7073,
#   data and logs in ./kiln-cluster-data/nX (KILN_CLUSTER_DATA). nginx: 127.0.0.1:8080
#   (NGINX_PORT; binary NGINX, default /usr/sbin/nginx). Services: Counter on 9080
#   (COUNTER_PORT), Saga on 9081 (SAGA_PORT).
set -euo pipefail
cd "$(dirname "$0")/../.."

data=${KILN_CLUSTER_DATA:-./kiln-cluster-data}
nginx_port=${NGINX_PORT:-8080}
counter_port=${COUNTER_PORT:-9080}
saga_port=${SAGA_PORT:-9081}
nginx_bin=${NGINX:-/usr/sbin/nginx}
[ -x "$nginx_bin" ] || nginx_bin=$(command -v nginx || true)
if [ -z "$nginx_bin" ] || [ ! -x "$nginx_bin" ]; then
  echo "nginx is required (Debian/Ubuntu: apt-get install nginx-light)" >&2
  exit 1
fi

echo "==> building the Kotlin SDK and examples (Maven)"
mvn -B -q -Dkotlin.compiler.daemon=false -f examples/pom.xml install -DskipTests
echo "==> building kiln (cargo, release)"
cargo build --release --quiet
kiln=target/release/kiln

pids=()
tmp=$(mktemp -d)
cleanup() {
  trap - EXIT INT TERM
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_for() { for _ in $(seq 1 150); do curl -sf -o /dev/null "$1" && return 0; sleep 0.2; done; echo "timed out waiting for $1" >&2; exit 1; }

PORT=$counter_port java -jar examples/counter/target/counter.jar > "$tmp/counter.log" 2>&1 & pids+=($!)
PORT=$saga_port java -jar examples/saga/target/saga.jar > "$tmp/saga.log" 2>&1 & pids+=($!)

members=n1=127.0.0.1:7071,n2=127.0.0.1:7072,n3=127.0.0.1:7073
for i in 1 2 3; do
  mkdir -p "$data/n$i"
  "$kiln" serve --node-id "n$i" \
    --ingress-addr "127.0.0.1:808$i" --admin-addr "127.0.0.1:907$i" --peer-addr "127.0.0.1:707$i" \
    --data-dir "$data/n$i" --cluster "$members" >> "$data/n$i.log" 2>&1 & pids+=($!)
done

# nginx: the template with its temp dir and port filled in, as a foreground (non-daemon) child.
sed -e "s|@DIR@|$tmp|g" -e "s|@PORT@|$nginx_port|g" examples/cluster/nginx.conf.template > "$tmp/nginx.conf"
chmod 755 "$tmp"   # nginx workers run as an unprivileged user when started as root
"$nginx_bin" -e "$tmp/error.log" -p "$tmp" -c "$tmp/nginx.conf" & pids+=($!)

for i in 1 2 3; do wait_for "http://127.0.0.1:907$i/health"; done
wait_for "http://127.0.0.1:$counter_port/discover"
wait_for "http://127.0.0.1:$saga_port/discover"
# Every node sees all three alive.
for _ in $(seq 1 150); do
  alive=$(curl -sf http://127.0.0.1:9071/cluster | grep -o '"status":"alive"' | wc -l || true)
  [ "$alive" -ge 3 ] && break
  sleep 0.2
done
# Registered once (on n1): the cluster replicates deployments to every member.
for port in "$counter_port" "$saga_port"; do
  curl -sf -X POST http://127.0.0.1:9071/deployments -H 'content-type: application/json' \
    -d "{\"uri\":\"http://127.0.0.1:$port\"}" > /dev/null
done

cat <<MSG

A three-node Kiln cluster is running behind nginx (http://127.0.0.1:$nginx_port), with Counter
and Saga registered. Node logs: $data/nX.log.
Try (through nginx; any node answers for any key):
  curl -X POST http://127.0.0.1:$nginx_port/Counter/my-key/add -d 1
  curl -X POST http://127.0.0.1:$nginx_port/Counter/my-key/get
  curl -X POST http://127.0.0.1:$nginx_port/Trip/book -d '{"tripId":"t1","flight":"f1","hotel":"h1","car":"c1"}'
  curl -X POST http://127.0.0.1:$nginx_port/Flights/f1/status
Where does a key live?
  curl 'http://127.0.0.1:9071/cluster/owner?service=Counter&key=my-key'
  $kiln cluster status --admin http://127.0.0.1:9071
Web UI: http://127.0.0.1:9071/ui

Add a fourth node (another terminal; about a quarter of the partitions move to it):
  $kiln serve --node-id n4 --ingress-addr 127.0.0.1:8084 --admin-addr 127.0.0.1:9074 \\
    --peer-addr 127.0.0.1:7074 --data-dir $data/n4 --join 127.0.0.1:7071
Remove it again (graceful: its partitions move back first):
  $kiln cluster leave n4 --admin http://127.0.0.1:9071
(nginx only knows n1..n3; requests for n4's partitions reach it through them.)

Press Ctrl-C to stop.
MSG
wait -n "${pids[@]}"
