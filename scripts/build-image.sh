#!/usr/bin/env bash
# Builds the meshsec OCI image offline (no container registry): a Debian root filesystem from
# mmdebstrap with deploy/image/packages.txt, a venv at /opt/meshsec holding exactly
# requirements/all.txt plus meshsec's own wheel, and the configuration in
# deploy/image/config.dockerfile, imported into podman. deploy/Dockerfile is the same image for
# those with a registry. Prints progress and the image size on stderr and, as its last line on
# stdout, the image reference (localhost/meshsec/meshsec:<version>-<input hash>).
# Caches (under MESHSEC_IMAGE_CACHE, default /var/cache/meshsec): the rootfs tarball, keyed by the
# package list, suite and snapshot; the wheelhouse, keyed by the lock; and the image itself in
# podman's store, keyed by every input (so an unchanged tree builds nothing).
#   MESHSEC_IMAGE_REBUILD=1  ignore the caches (they are rewritten)
# Needs root, mmdebstrap and podman (scripts/install.sh installs them) and .venv (for pip).
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS
say() { echo "build-image: $*" >&2; }
[ "$(id -u)" -eq 0 ] || { say "run this as root (mmdebstrap, chroot and podman need it)"; exit 1; }
for tool in mmdebstrap podman; do
    command -v "$tool" >/dev/null || { say "$tool is missing; run bash scripts/install.sh"; exit 1; }
done
PYTHON=${PYTHON:-$PWD/.venv/bin/python}
[ -x "$PYTHON" ] || { say "no $PYTHON; run bash scripts/install.sh"; exit 1; }
cache=${MESHSEC_IMAGE_CACHE:-/var/cache/meshsec}
rebuild=${MESHSEC_IMAGE_REBUILD:-0}
mkdir -p "$cache"
# One build at a time per cache (parallel test runs share it and podman's store).
exec 9>"$cache/.lock"
flock 9
# shellcheck source=../deploy/image/debian.conf
. deploy/image/debian.conf

mapfile -t packages < <(sed -e 's/#.*//' -e 's/[[:space:]]//g' deploy/image/packages.txt | grep -v '^$')
hash_of() { sha256sum | cut -c1-16; }
version=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
base_key=$(printf '%s\n' "$SUITE" "$SNAPSHOT" "${packages[@]}" | hash_of)
wheels_key=$(cat requirements/all.txt requirements/build.txt | hash_of)
if git rev-parse --git-dir >/dev/null 2>&1; then
    mapfile -t sources < <(git ls-files -co --exclude-standard -- agent common controller meshctl proto \
        pyproject.toml setup.py README.md deploy/image scripts/build-image.sh | sort)
else
    mapfile -t sources < <(find agent common controller meshctl proto deploy/image pyproject.toml setup.py \
        README.md scripts/build-image.sh -type f ! -name '*.pyc' | sort)
fi
image_key=$({ printf '%s\n' "$base_key" "$wheels_key"; sha256sum "${sources[@]}"; } | hash_of)
ref=localhost/meshsec/meshsec:$version-$image_key

report() {
    local bytes
    bytes=$(podman image inspect --format '{{.Size}}' "$ref")
    say "image $ref: $((bytes / 1000000)) MB ($bytes bytes), $((SECONDS - started)) s"
    echo "$ref"
}
if [ "$rebuild" != 1 ] && podman image exists "$ref"; then
    say "cached: nothing changed since $ref was built"
    report
    exit 0
fi

# 1. The Debian root filesystem (cached tarball).
rootfs=$cache/rootfs-$SUITE-$base_key.tar
if [ "$rebuild" = 1 ] || [ ! -s "$rootfs" ]; then
    mirror=http://snapshot.debian.org/archive/debian/$SNAPSHOT
    if ! "$PYTHON" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=5)' \
            "$mirror/dists/$SUITE/Release" 2>/dev/null; then
        say "snapshot.debian.org does not answer; using $MIRROR (the live $SUITE, not snapshot $SNAPSHOT)"
        mirror=$MIRROR
    fi
    say "mmdebstrap $SUITE from $mirror: ${packages[*]}"
    t=$SECONDS
    # Documentation, man pages and translations are not needed in a container; copyrights stay.
    mmdebstrap --quiet --variant=minbase --format=tar --include="$(IFS=,; echo "${packages[*]}")" \
        --aptopt='Acquire::Languages "none"' \
        --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
        --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
        --dpkgopt='path-exclude=/usr/share/info/*' \
        "$SUITE" "$rootfs.partial.tar" "$mirror"
    mv "$rootfs.partial.tar" "$rootfs"
    echo "$mirror" >"$rootfs.source"
    say "rootfs: $(du -h "$rootfs" | cut -f1) in $((SECONDS - t)) s"
else
    say "rootfs cached: $rootfs (from $(cat "$rootfs.source" 2>/dev/null || echo '?'))"
fi

# 2. The locked wheels, and pip itself to install them with (cached wheelhouse).
wheels=$cache/wheels-$wheels_key
if [ "$rebuild" = 1 ] || [ ! -f "$wheels/.complete" ]; then
    t=$SECONDS
    rm -rf "$wheels" && mkdir -p "$wheels"
    "$PYTHON" -m pip wheel -q --require-hashes -r requirements/all.txt -w "$wheels" 2>&1 | grep -v '^WARNING: Location' >&2 || true
    pip_pin=$(grep -o '^pip==[^ ]*' requirements/build.txt)
    "$PYTHON" -m pip download -q --no-deps "$pip_pin" -d "$wheels" 2>&1 | grep -v '^WARNING: Location' >&2 || true
    touch "$wheels/.complete"
    say "wheelhouse: $(find "$wheels" -name '*.whl' | wc -l) wheels in $((SECONDS - t)) s"
fi

# 3. The dependency image: rootfs + venv with the locked wheels + user, imported with the shared
#    configuration (cached in podman's store, keyed by the rootfs, the lock and that recipe).
base_ref=localhost/meshsec/meshsec-deps:$({ printf '%s\n' "$base_key" "$wheels_key"
    cat deploy/image/install-deps.sh deploy/image/config.dockerfile; } | hash_of)
work=$(mktemp -d /var/tmp/meshsec-image.XXXXXX)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/wheels"
pip_wheel=$(cd "$wheels" && ls pip-*.whl)
if [ "$rebuild" = 1 ] || ! podman image exists "$base_ref"; then
    t=$SECONDS
    root=$work/root
    mkdir -p "$root"
    tar -C "$root" -xf "$rootfs"
    mkdir -p "$root/tmp/wheels"
    cp "$wheels"/*.whl requirements/all.txt "$root/tmp/wheels/"
    cp deploy/image/install-deps.sh "$root/tmp/wheels/"
    # Nothing from the host's environment (PIP_* settings, indexes) reaches the chroot.
    chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
        /bin/sh /tmp/wheels/install-deps.sh "$pip_wheel"
    changes=()
    while IFS= read -r line; do
        changes+=(--change "$line")
    done < <(grep -v -e '^#' -e '^$' deploy/image/config.dockerfile)
    tar -C "$root" -c . | podman import --quiet "${changes[@]}" - "$base_ref" >/dev/null
    rm -rf "$root"
    say "dependency image $base_ref built in $((SECONDS - t)) s"
else
    say "dependency image cached: $base_ref"
fi

# 4. meshsec's own wheel as one thin layer on top (pip, from its wheel, mounted for the build only).
t=$SECONDS
"$PYTHON" -m pip wheel -q --no-deps --no-build-isolation . -w "$work/wheels" 2>&1 \
    | grep -v '^WARNING: Location' >&2 || true
cp "$wheels/$pip_wheel" "$work/wheels/"
cat >"$work/Containerfile" <<CONTAINERFILE
FROM $base_ref
USER 0
RUN /opt/meshsec/bin/python /wheels/$pip_wheel/pip install -q --no-index --no-deps /wheels/meshsec-*.whl
USER 10001
LABEL org.opencontainers.image.version="$version" io.meshsec.inputs="$image_key"
CONTAINERFILE
# runc and cgroupfs: crun fails on this host's hybrid cgroups (docs/image.md); no network. No layer
# cache: it would reuse an older RUN layer, since the mounted wheel is not part of its key.
podman --runtime runc --cgroup-manager cgroupfs build --quiet --no-cache --network none \
    --ulimit nofile=20000:20000 --ulimit nproc=4096:4096 \
    --volume "$work/wheels:/wheels:ro" -t "$ref" -f "$work/Containerfile" "$work" >/dev/null
say "meshsec layer built in $((SECONDS - t)) s"

# Keep the newest images (other worktrees on this machine may be using theirs).
prune() {
    podman images --format '{{.Repository}}:{{.Tag}}' --sort created "$1" | tail -n +"$(($2 + 1))" \
        | xargs -r podman rmi >/dev/null 2>&1 || true
}
prune localhost/meshsec/meshsec 6
prune localhost/meshsec/meshsec-deps 3
report
