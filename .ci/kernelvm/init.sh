#!/bin/busybox sh
# /init of the kernel lane's initramfs: load just enough modules to mount the host root over 9p,
# put a tmpfs overlay on it (the host root stays read-only) and hand over to guest.sh from the repo.
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /modules.order); do insmod "$m" || echo "lane-init: insmod $m failed"; done
repo=/work/main
for arg in $(cat /proc/cmdline); do
  case "$arg" in meshsec.repo=*) repo=${arg#meshsec.repo=} ;; esac
done
mkdir -p /lower /upper /newroot
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,ro,cache=loose hostroot /lower || {
  echo "lane-init: cannot mount host root"; poweroff -f; }
mount -t tmpfs -o size=2g tmpfs /upper
mkdir -p /upper/up /upper/work
mount -t overlay -o lowerdir=/lower,upperdir=/upper/up,workdir=/upper/work overlay /newroot || {
  echo "lane-init: cannot mount overlay"; poweroff -f; }
mkdir -p /newroot/lane-results
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 results /newroot/lane-results
umount /proc /sys /dev 2>/dev/null
exec switch_root /newroot /bin/sh "$repo/.ci/kernelvm/guest.sh"
