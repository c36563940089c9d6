#!/usr/bin/env bash
# callbridge's one entry point. On a fresh Debian machine:
#   ./run.sh serve [callbridge serve flags]   install what is missing, run the engine
#   ./run.sh test  [pytest args]              install what is missing, run every test
#   ./run.sh bench [NAME] [flags]             install bench extras, run bench/NAME.py
#                                             (no NAME: sip_cps --latency --overload, then
#                                             media, media_paths; flags alone: sip_cps with them)
#   ./run.sh bench ... --compare FILE         then compare with an earlier bench/results/*.json
# Installing is idempotent: Debian packages from debian-packages.txt (apt-get,
# as root or through sudo), Python packages into .venv from pyproject.toml.
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$PWD
VENV=${CALLBRIDGE_VENV:-$ROOT/.venv}

need_packages() {  # print the packages of list file $1 that are not installed
  grep -v '^\s*#' "$1" | awk '{print $1}' | grep -v '^$' | while read -r pkg; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || echo "$pkg"
  done
}

install_debian() {  # $1: package list file
  local missing
  missing=$(need_packages "$1")
  [ -z "$missing" ] && return 0
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "run.sh: installing Debian packages: $missing" >&2
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  # shellcheck disable=SC2086
  $sudo apt-get install -y -qq --no-install-recommends $missing >/dev/null
  missing=$(need_packages "$1")
  if [ -n "$missing" ]; then
    echo "run.sh: could not install: $missing" >&2
    exit 1
  fi
}

# The interpreter .venv is made from: Debian's python3 (debian-packages.txt),
# not whichever python3 comes first on PATH. A pyenv or source build is
# often made without profile-guided and link-time optimisation: measured
# here, Debian's 3.11 parses a SIP INVITE in 30-32 us against 36 us for
# pyenv's 3.11.7 and reads an RTP packet 5-9% faster (docs/architecture.md).
# CALLBRIDGE_PYTHON=/path/to/python chooses another.
python_for_venv() {
  if [ -n "${CALLBRIDGE_PYTHON:-}" ]; then
    echo "$CALLBRIDGE_PYTHON"
  elif [ -x /usr/bin/python3 ]; then
    echo /usr/bin/python3
  else
    command -v python3
  fi
}

install_python() {
  local stamp="$VENV/.callbridge-installed"
  local python want base
  python=$(python_for_venv || true)
  if [ -z "$python" ] || ! command -v "$python" >/dev/null; then
    echo "run.sh: no Python interpreter to make $VENV from (${CALLBRIDGE_PYTHON:-/usr/bin/python3 or python3 on PATH}):" \
      "install Debian's python3 and python3-venv" >&2
    exit 1
  fi
  python=$(readlink -f "$(command -v "$python")")
  if [ -e "$VENV/bin/python" ]; then
    # empty when the venv's interpreter is gone: made again below, as from another one
    base=$("$VENV/bin/python" -c 'import sys; print(sys._base_executable)' 2>/dev/null || true)
    [ -n "$base" ] && base=$(readlink -f "$base")
    if [ "$base" != "$python" ]; then
      if [ -z "${CALLBRIDGE_VENV:-}" ]; then  # the checkout's own .venv: made again
        echo "run.sh: $VENV was made from ${base:-an interpreter that is gone}; making it again from $python" >&2
        rm -rf "$VENV"
      else  # someone else's: never removed
        echo "run.sh: CALLBRIDGE_VENV=$VENV was made from $base, not $python; used as it is" >&2
        python=$base
      fi
    fi
  fi
  want="$(sha256sum < pyproject.toml | cut -c1-16) $python"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    return 0
  fi
  echo "run.sh: installing Python packages into $VENV ($python)" >&2
  [ -x "$VENV/bin/python" ] || "$python" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip >/dev/null
  "$VENV/bin/pip" install -q -e ".[test,fast]"
  echo "$want" > "$stamp"
}

# The per-packet media modules compiled with mypyc into $VENV/native
# (engine/native.py; a third fewer instructions on a packet's path), again
# whenever one of their sources changed: the engine loads them only while
# they match their sources. CALLBRIDGE_NATIVE=0 runs the sources.
build_native() {
  export CALLBRIDGE_NATIVE_DIR="$VENV/native"
  [ "${CALLBRIDGE_NATIVE:-1}" = "0" ] && return 0
  if ! "$VENV/bin/python" -c \
      'import sys, engine.native as n; sys.exit(0 if n.install() else 1)' 2>/dev/null; then
    echo "run.sh: compiling the media modules (mypyc) into $VENV/native" >&2
    "$VENV/bin/python" tools/build_native.py "$VENV/native"
  fi
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
  serve)
    install_debian debian-packages.txt
    install_python
    build_native
    exec "$VENV/bin/callbridge" serve "$@"
    ;;
  test)
    install_debian debian-packages.txt
    install_python
    build_native
    exec "$VENV/bin/python" -m pytest "$@"
    ;;
  bench)
    # --compare FILE (anywhere in the flags): after the benches, compare
    # FILE (an earlier bench/results/*.json) with this run's file of the
    # same bench (bench/results.py compare; exits 1 on a >10% regression)
    compare=""
    args=()
    while [ $# -gt 0 ]; do
      if [ "$1" = "--compare" ]; then
        [ $# -ge 2 ] || { echo "run.sh: --compare needs a FILE (bench/results/*.json)" >&2; exit 2; }
        compare=$2
        shift 2
        continue
      fi
      args+=("$1")
      shift
    done
    if [ -n "$compare" ] && [ ! -f "$compare" ]; then
      echo "run.sh: --compare: no such file: $compare" >&2
      exit 2
    fi
    set -- ${args[@]+"${args[@]}"}
    install_debian debian-packages.txt
    install_debian bench-packages.txt
    install_python
    build_native
    since=$(date +%s)
    if [ $# -gt 0 ] && [ -f "bench/$1.py" ]; then
      name=$1
      shift
      "$VENV/bin/python" "bench/$name.py" "$@"
    elif [ $# -gt 0 ]; then
      "$VENV/bin/python" bench/sip_cps.py "$@"
    else
      # Everything issue 17 asks of one run: rates and ratios, the latency
      # histogram, 1.5x overload, then media against the echo and Janus's
      # AudioBridge, then the same engine with two RTP send workers
      # (--media-send-workers 2; saved as bench media_send_workers_2),
      # then each media path's cost per packet at 50 and 1,000 legs (bench/media_paths.py).
      "$VENV/bin/python" bench/sip_cps.py --latency --overload
      "$VENV/bin/python" bench/media.py --janus
      "$VENV/bin/python" bench/media.py --send-workers 2
      "$VENV/bin/python" bench/media_paths.py --rtcp
    fi
    if [ -n "$compare" ]; then
      exec "$VENV/bin/python" bench/results.py compare "$compare" --since "$since"
    fi
    ;;
  *)
    echo "usage: ./run.sh serve|test|bench [args...]" >&2
    exit 2
    ;;
esac
