#!/usr/bin/env bash
# Install the Debian packages the integration tests need (redis-server, kcat, and
# prometheus with promtool for tests/test_prometheus.py and the rules check).
# Idempotent: does nothing (not even apt-get update) when everything is present.
set -euo pipefail

declare -A pkg_for=([redis-server]=redis-server [redis-cli]=redis-tools [kcat]=kcat
                    [prometheus]=prometheus [promtool]=prometheus)
missing=()
for cmd in "${!pkg_for[@]}"; do
  command -v "$cmd" >/dev/null || missing+=("${pkg_for[$cmd]}")
done
((${#missing[@]} == 0)) && { echo "install-tools.sh: all tools present" >&2; exit 0; }

echo "install-tools.sh: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >&2
# Once each: prometheus and promtool come from one package. The packaged Prometheus
# service is not used: tests/test_prometheus.py starts its own on a free port.
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
