#!/bin/bash
# Health check of a Kiln node: GET /health on its admin API must answer 200. The address is
# KILN_ADMIN_ADDR (default 127.0.0.1:9070; a wildcard address is checked on loopback). Plain
# bash (/dev/tcp): the container image needs no HTTP client. Exit 0 healthy, 1 not.
set -u
addr="${KILN_ADMIN_ADDR:-127.0.0.1:9070}"
host="${addr%:*}"
port="${addr##*:}"
host="${host#[}"
host="${host%]}"
case "$host" in
  0.0.0.0 | "") host=127.0.0.1 ;;
  ::) host=::1 ;;
esac
if ! exec 3<>"/dev/tcp/$host/$port"; then
  echo "unhealthy: nothing listens on $host:$port" >&2
  exit 1
fi
printf 'GET /health HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n' "$addr" >&3
status=""
read -r -t "${KILN_HEALTHCHECK_TIMEOUT_SECS:-3}" status <&3
exec 3<&-
case "$status" in
  "HTTP/1."?" 200 "*) exit 0 ;;
esac
echo "unhealthy: GET http://$host:$port/health answered ${status:-nothing}" >&2
exit 1
