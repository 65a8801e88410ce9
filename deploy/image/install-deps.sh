#!/bin/sh
# Runs inside the image's root filesystem (a chroot, from scripts/build-image.sh): the venv at
# /opt/meshsec with exactly the lock requirements/all.txt from the wheels in /tmp/wheels, and the
# meshsec user. pip runs from its own wheel ($1, which pip supports), so the image has no pip.
# deploy/Dockerfile does the same in its build and runtime stages.
set -eu
pip_wheel=$1
python3 -m venv --without-pip /opt/meshsec
/opt/meshsec/bin/python "/tmp/wheels/$pip_wheel/pip" install -q --no-index \
    --find-links /tmp/wheels --require-hashes -r /tmp/wheels/all.txt
useradd --uid 10001 --user-group --no-create-home --home-dir /nonexistent \
    --shell /usr/sbin/nologin meshsec
mkdir -p /var/lib/meshsec /run/meshsec
chown 10001:10001 /var/lib/meshsec /run/meshsec
rm -rf /tmp/wheels /root/.cache
