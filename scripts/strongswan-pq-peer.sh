#!/usr/bin/env bash
# Builds, once, the Debian unstable chroot that holds strongSwan 6.1 with ML-KEM (RFC 9370,
# IKE_INTERMEDIATE), the post-quantum interop peer of tests/interop (Debian 12's 5.9.8 has no
# ML-KEM, Debian 13's 6.0 no ML-KEM plugin). Called by scripts/install.sh; needs root and
# mmdebstrap. The chroot is cached under /var/cache/meshsec/ keyed by the suite and package
# list, so a changed list builds a new one and an unchanged one is reused.
#   --root   print the chroot's path and exit (0 if it is built, 1 if not); builds nothing
#   MESHSEC_CACHE=DIR   cache directory (default /var/cache/meshsec)
set -euo pipefail

SUITE=unstable
PACKAGES=(
    charon-systemd strongswan-swanctl libstrongswan-standard-plugins
    libstrongswan-extra-plugins libcharon-extra-plugins iproute2
)
MIN_VERSION=6.1

cache=${MESHSEC_CACHE:-/var/cache/meshsec}
key=$(printf '%s\n' "$SUITE" "${PACKAGES[@]}" | sha256sum | cut -c1-16)
root="$cache/strongswan-$SUITE-$key"
ready="$root/.meshsec-ready"

if [ "${1:-}" = --root ]; then
    echo "$root"
    [ -f "$ready" ]
    exit
fi
[ -f "$ready" ] && exit 0

mkdir -p "$cache"
tmp="$root.partial"
rm -rf "$tmp"
echo "meshsec: building the strongSwan $MIN_VERSION chroot (Debian $SUITE) at $root"
# The unstable Release file is often past its Valid-Until on mirrors and snapshots.
mmdebstrap --quiet --variant=minbase --aptopt='Acquire::Check-Valid-Until "false"' \
    --include="$(IFS=,; echo "${PACKAGES[*]}")" "$SUITE" "$tmp" >/dev/null
version=$(chroot "$tmp" dpkg-query -W -f='${Version}' charon-systemd)
if ! dpkg --compare-versions "$version" ge "$MIN_VERSION"; then
    echo "meshsec: Debian $SUITE has strongSwan $version, older than $MIN_VERSION (no ML-KEM)" >&2
    rm -rf "$tmp"
    exit 1
fi
if [ ! -e "$tmp/usr/lib/ipsec/plugins/libstrongswan-openssl.so" ]; then
    echo "meshsec: the chroot has no strongSwan openssl plugin (ML-KEM lives there)" >&2
    rm -rf "$tmp"
    exit 1
fi
mkdir -p "$tmp/run" "$tmp/dev" "$tmp/proc"
echo "$version" >"$tmp/.meshsec-ready"
mv "$tmp" "$root"
echo "meshsec: strongSwan $version ready in $root"
