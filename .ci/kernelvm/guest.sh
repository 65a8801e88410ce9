#!/bin/sh
# Runs as PID 1 inside the kernel-lane guest (host root read-only + tmpfs overlay). Reads its
# parameters from /lane-results/lane.env (written by .ci/kernel-lane), runs the command, records
# the exit status for the host and powers off.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /dev/pts /dev/shm && mount -t devpts devpts /dev/pts && mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /run
mkdir -p /run/netns
. /lane-results/lane.env
# The guest kernel's modules live in the lane cache (visible through the shared root; /tmp and
# /var/tmp are writable through the overlay, which is tmpfs-backed, so nothing is mounted over them).
mkdir -p "/lib/modules/$LANE_KVER"
mount --bind "$LANE_MODULES" "/lib/modules/$LANE_KVER"
# Crypto modules load (and self-test) on first use, which takes seconds under emulation: load
# them here so that time is not charged to the first test.
for m in xfrm_user esp4 esp6 ah4 xfrm_interface veth nf_tables \
         authenc authencesn cbc aes_generic aesni_intel sha256_generic sha512_generic hmac gcm ghash_generic \
         seqiv echainiv ctr; do
  modprobe "$m" 2>/dev/null || true
done
ip link set lo up
hostname kernel-lane
echo "lane-guest: kernel $(uname -r), at $(cut -d' ' -f1 /proc/uptime)s running: $LANE_COMMAND"
cd "$LANE_CWD" || true
sh -c "$LANE_COMMAND"
rc=$?
echo "$rc" > /lane-results/rc
sync
echo "lane-guest: command done at $(cut -d' ' -f1 /proc/uptime)s"
echo "MESHSEC-LANE-EXIT=$rc"
umount /lane-results 2>/dev/null
/bin/busybox poweroff -f
