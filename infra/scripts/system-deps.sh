#!/usr/bin/env bash
# Installs the Debian packages FleetPulse needs, only those missing. Safe to run again.
#   usage: infra/scripts/system-deps.sh [--test]   (--test adds what only the tests use)
set -euo pipefail

need=()
check() {  # check <package> <file or command that proves it is there>
  if [[ "$2" == /* ]]; then [[ -e "$2" ]] || need+=("$1"); else command -v "$2" >/dev/null || need+=("$1"); fi
}
check openjdk-17-jre-headless java
check maven mvn
check postgresql-15 /usr/lib/postgresql/15/bin/initdb
check postgresql-client-15 psql
check pgbackrest pgbackrest
if [[ "${1:-}" == "--test" ]]; then
  check kcat kcat
  check nodejs node
  check npm npm
  check chromium chromium  # the chart page's test renders it headless
fi

if ((${#need[@]} == 0)); then
  exit 0
fi
echo "installing Debian packages: ${need[*]}"
sudo=()
if [[ $(id -u) -ne 0 ]]; then
  command -v sudo >/dev/null || { echo "need root (or sudo) to apt-get install ${need[*]}" >&2; exit 1; }
  sudo=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}"
