#!/usr/bin/env bash
# Installs the Debian packages FleetPulse needs, only those missing. Safe to run again.
#   usage: infra/scripts/system-deps.sh [--monitoring] [--test]
#     --monitoring adds Prometheus, Alertmanager and the PostgreSQL exporter (`fleetpulse stack up --monitoring`)
#     --test adds what only the tests use (the monitoring's packages among them)
#     --bench adds the agents the agent benchmark measures ours against
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
monitoring=0 test=0 bench=0
for arg in "$@"; do
  case "$arg" in
    --monitoring) monitoring=1 ;;
    --test) test=1 monitoring=1 ;;
    --bench) bench=1 ;;
    *) echo "usage: $0 [--monitoring] [--test] [--bench]" >&2; exit 2 ;;
  esac
done
if ((monitoring)); then
  check prometheus /usr/bin/prometheus  # promtool comes with it
  check prometheus-postgres-exporter /usr/bin/prometheus-postgres-exporter
  check prometheus-alertmanager /usr/bin/prometheus-alertmanager  # amtool comes with it
fi
if ((test)); then
  check kcat kcat
  check nodejs node
  check npm npm
  check chromium chromium  # the chart page's test renders it headless
fi

if ((bench)); then
  check prometheus-node-exporter /usr/bin/prometheus-node-exporter
  check collectd /usr/sbin/collectd
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
