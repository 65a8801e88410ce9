#!/usr/bin/env bash
# Installs everything meshsec's lab and test suite need on Debian 12, as root:
# system packages (strongSwan as a real peer, etcd, iproute2, capture and benchmark tools, qemu for
# the kernel lane, mmdebstrap and podman with runc to build and run the image offline),
# strongSwan 6.1 with ML-KEM in a cached Debian unstable chroot (scripts/strongswan-pq-peer.sh) and
# a virtualenv at .venv holding exactly the lock file requirements/dev.txt (pinned, with hashes) plus
# meshsec itself, editable.
# Safe to re-run: apt skips what is there, and the virtualenv is rebuilt only when the lock or the
# Python changed since it was built (its .lock-stamp says which), so it never keeps a package the
# lock no longer names.
#   MESHSEC_FRESH_VENV=1  rebuild the virtualenv from scratch, with no pip cache (CI: .ci/run)
#   MESHSEC_LOCK=FILE     another lock from requirements/ (default: dev)
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
    libcharon-extauth-plugins
    etcd-server
    qemu-system-x86 busybox-static cpio kmod
    mmdebstrap podman runc
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
# strongSwan 6.1 (ML-KEM) as a second interop peer, in a cached Debian unstable chroot.
bash scripts/strongswan-pq-peer.sh

PYTHON=${PYTHON:-python3}
lock=requirements/${MESHSEC_LOCK:-dev}.txt
[ -f "$lock" ] || { echo "meshsec: no lock file $lock" >&2; exit 1; }
stamp="$(sha256sum "$lock" | cut -d' ' -f1) $("$PYTHON" -c 'import sys; print(sys.version.split()[0])')"
pip_flags=(-q)
if [ "${MESHSEC_FRESH_VENV:-0}" = 1 ]; then
    rm -rf .venv
    pip_flags+=(--no-cache-dir)
elif [ -x .venv/bin/python ] && [ "$(cat .venv/.lock-stamp 2>/dev/null)" != "$stamp" ]; then
    echo "meshsec: $lock or the Python changed since .venv was built; rebuilding it"
    rm -rf .venv
fi
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
    # Exactly the lock: every package pinned and hash-checked, nothing resolved at install time.
    .venv/bin/python -m pip install "${pip_flags[@]}" --require-hashes -r "$lock" 2>&1 \
        | grep -v '^WARNING: Location' || true
    # meshsec itself, built by the locked setuptools (no isolated build fetching a newer one).
    .venv/bin/python -m pip install "${pip_flags[@]}" --no-deps --no-build-isolation -e . 2>&1 \
        | grep -v '^WARNING: Location' || true
    .venv/bin/python -m pip check >/dev/null \
        || { .venv/bin/python -m pip check >&2; echo "meshsec: $lock is inconsistent" >&2; exit 1; }
    echo "$stamp" >.venv/.lock-stamp
fi
.venv/bin/python -c "import meshsec.agent, meshsec.controller, meshsec.v1" \
    || { echo "meshsec: the virtualenv at .venv is broken; remove it and re-run" >&2; exit 1; }
