#!/usr/bin/env bash
# Installs everything meshsec's lab and test suite need on Debian 12, as root:
# system packages (strongSwan as a real peer, etcd, iproute2, capture and benchmark tools, qemu for
# the kernel lane) and a virtualenv at .venv with meshsec installed editable plus its dev tools.
# Safe to re-run: apt and pip skip what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
    echo "meshsec: run this as root (it installs Debian packages and creates network namespaces)" >&2
    exit 1
fi

APT_PACKAGES=(
    iproute2 iputils-ping nftables iptables tcpdump tshark iperf3 graphviz
    charon-systemd strongswan-swanctl strongswan-pki libcharon-extra-plugins
    libstrongswan-standard-plugins libstrongswan-extra-plugins
    etcd-server
    qemu-system-x86 busybox-static cpio kmod
)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "meshsec: installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
extras=${MESHSEC_EXTRAS:-dev}
.venv/bin/python -m pip install -q -e ".[$extras]" 2>&1 | grep -v '^WARNING: Location' || true
.venv/bin/python -c "import meshsec.agent, meshsec.controller, meshsec.v1" \
    || { echo "meshsec: the virtualenv at .venv is broken; remove it and re-run" >&2; exit 1; }
