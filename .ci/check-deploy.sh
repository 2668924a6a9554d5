#!/usr/bin/env bash
# deploy/ checked with the tools that consume it, offline: Kubernetes schemas
# (.ci/check-k8s.py), Prometheus rules (promtool check + unit tests), the systemd unit
# (systemd-analyze verify + security). The dashboard and the scrape are Rust tests
# (tests/deploy.rs, tests/prometheus.rs); the image context is .ci/check-image-context.py.
#
# Usage: .ci/check-deploy.sh PYTHON
#   PYTHON: an interpreter with kubernetes-validate and cloudcoil-models-prometheus-operator
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

python=${1:?usage: $0 PYTHON}
# The exposure score `systemd-analyze security` may give the unit (0-100; the unit scores
# about 14, "1.4 OK"): a hardening line lost in an edit raises it past this.
max_exposure=20

timed() {
    local t=$SECONDS status=0
    printf '+ %s\n' "$*"
    "$@" || status=$?
    printf '    (%ss)\n' "$((SECONDS - t))"
    return "$status"
}

echo "-- Kubernetes manifests (deploy/kubernetes*.yaml)"
timed "$python" .ci/check-k8s.py

echo "-- Prometheus alert rules (deploy/prometheus-rules.yml)"
timed promtool check rules deploy/prometheus-rules.yml
timed promtool test rules deploy/prometheus-rules.test.yml

echo "-- systemd unit (deploy/wsgate.service)"
# A scratch root holding the unit, an executable at the path ExecStart names (verify checks
# only that it is executable, so a stand-in: no build needed here), and the host's system
# units (verify loads the targets the unit is ordered against). verify prints its findings
# and still exits 0 for most of them (an unknown key, a bad value): any output fails.
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
install -d "$root/usr/local/bin"
printf '#!/bin/sh\nexit 0\n' >"$root/usr/local/bin/wsgate"
chmod 0755 "$root/usr/local/bin/wsgate"
install -D -m 0644 deploy/wsgate.service "$root/etc/systemd/system/wsgate.service"
mkdir -p "$root/usr/lib/systemd"
cp -r /lib/systemd/system "$root/usr/lib/systemd/"
verify=$(timed systemd-analyze verify --root="$root" wsgate.service 2>&1) || {
    echo "$verify"
    exit 1
}
echo "$verify"
if [[ $(grep -cv '^+ \|^    (' <<<"$verify") -ne 0 ]]; then
    echo "error: systemd-analyze verify reported problems in deploy/wsgate.service" >&2
    exit 1
fi
# --threshold: exit non-zero when the exposure is above it.
security=$(systemd-analyze security --offline=yes --root="$root" --threshold="$max_exposure" \
    wsgate.service 2>&1) || {
    echo "$security"
    echo "error: deploy/wsgate.service's exposure is above $max_exposure (was about 14)" >&2
    exit 1
}
tail -n 1 <<<"$security"
