#!/bin/bash
# Builds the lab's dom0 image into $1 (a cache folder named by the hash of
# this script, so a change here rebuilds it).  Needs root (debootstrap,
# chroot).  Inputs: $1 the folder to fill; $2 the pinned Xen 4.17.5
# hypervisor .deb (CONFIG_SHADOW_PAGING=y), used when the archive's build
# lacks shadow paging; MIRROR the Debian mirror.
#
# Produces: rootfs/ (kept: the project's cffi module is compiled in a chroot
# of it each run), rootfs.img (ext4, booted with snapshot=on so it stays
# pristine), xen.elf (with shadow paging), xen-noshadow.elf (the archive's
# build without it, when that is what the archive has: the lab's second
# boot shows the backend refusing it), dom0-vmlinuz, dom0-initrd, DONE.
set -euo pipefail
OUT=$1
PINNED_DEB=$2
MIRROR=${MIRROR:-http://deb.debian.org/debian}
PACKAGES=xen-utils-4.17,xen-hypervisor-4.17-amd64,linux-image-amd64,initramfs-tools,busybox,kmod,udev,iproute2,procps,libxen-dev,gcc,libc6-dev,python3,python3-dev,python3-ply,python3-cffi,python3-pytest
R=$OUT/rootfs
export DEBIAN_FRONTEND=noninteractive
rm -rf "$R" "$OUT"/*.elf "$OUT"/rootfs.img "$OUT"/DONE
mkdir -p "$OUT"
echo "debootstrap bookworm ($PACKAGES)"
debootstrap --variant=minbase --include="$PACKAGES" bookworm "$R" "$MIRROR" > "$OUT/debootstrap.log" 2>&1 \
  || { tail -20 "$OUT/debootstrap.log"; exit 1; }
XCONF=$(ls "$R"/boot/xen-4.17-amd64.config)
XGZ=$R/boot/xen-4.17-amd64.gz
if grep -q '^CONFIG_SHADOW_PAGING=y' "$XCONF"; then
  echo "archive hypervisor has shadow paging: $(readlink -f "$XGZ")"
else
  echo "archive hypervisor lacks CONFIG_SHADOW_PAGING: kept as xen-noshadow.elf; installing the pinned 4.17.5"
  zcat "$XGZ" > "$OUT/xen-noshadow.elf"
  [ -f "$PINNED_DEB" ] || { echo "pinned hypervisor $PINNED_DEB missing"; exit 2; }
  cp "$PINNED_DEB" "$R/tmp/xen-hv.deb"
  chroot "$R" dpkg -i /tmp/xen-hv.deb > "$OUT/dpkg-hv.log" 2>&1
  rm -f "$R/tmp/xen-hv.deb"
  grep -q '^CONFIG_SHADOW_PAGING=y' "$XCONF" || { echo "no Xen build with shadow paging"; exit 2; }
fi
zcat "$XGZ" > "$OUT/xen.elf"     # QEMU's multiboot loader cannot read gzip
cp "$R"/boot/vmlinuz-* "$OUT/dom0-vmlinuz"
cp "$R"/boot/initrd.img-* "$OUT/dom0-initrd"
echo "/dev/vda / ext4 rw 0 1" > "$R/etc/fstab"
mkdir -p "$R/opt/colo"
# PID 1 of dom0: mounts the per-run project disk and hands over to its
# tests/xen/dom0-init, so the image stays the same from run to run.
cat > "$R/sbin/colo-lab-init" <<'EOS'
#!/bin/sh
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
mount -t ext4 /dev/vdb /opt/colo || echo "COLO-XENLAB: cannot mount the project disk"
[ -x /opt/colo/tests/xen/dom0-init ] && exec /opt/colo/tests/xen/dom0-init
echo "COLO-XENLAB-VERDICT rc=3 (no tests/xen/dom0-init on the project disk)"
echo o > /proc/sysrq-trigger; sleep 30
EOS
chmod +x "$R/sbin/colo-lab-init"
chroot "$R" sh -c 'apt-get clean' || true
mkfs.ext4 -q -F -L xenroot -d "$R" "$OUT/rootfs.img" 3G
touch "$OUT/DONE"
echo "image ready in $OUT"
