#!/bin/bash
# make xen-test: the Xen backend's lab.  Boots a real Xen 4.17 under QEMU
# (TCG, -cpu qemu64) with a Debian 12 dom0, starts PVH and PV guests that
# keep writing a known pattern, runs tests/xen/test_*.py inside dom0 against
# them, and brings the verdict back (exit code + report).
#
# Needs root: apt-get, debootstrap, chroot and mount --bind.
#
# Environment (all optional):
#   COLO_XENLAB_CACHE  dom0 image cache (default /var/cache/colo-xenlab), keyed
#                      on image.sh + the pinned hypervisor: a second run skips
#                      debootstrap
#   COLO_XENLAB_WORK   per-run scratch (default /var/tmp/colo-xenlab-run)
#   COLO_SHARED        the shared folder holding xenlab/ (default ../shared
#                      beside the clone)
#   COLO_XENLAB_NOSHADOW=0  skip the second boot (Xen without shadow paging)
#   COLO_XENLAB_SRC    take colo_plane/ and native/ from this tree instead
#   MIRROR             Debian mirror for debootstrap
set -euo pipefail
T0=$(date +%s.%N)
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
SHARED=${COLO_SHARED:-$(cd "$REPO/.." && pwd)/shared}
PINNED_DEB=$SHARED/xenlab/xen-hypervisor-4.17-amd64_4.17.5+72-g01140da4e8-1_amd64.deb
CACHE_ROOT=${COLO_XENLAB_CACHE:-/var/cache/colo-xenlab}
WORK=${COLO_XENLAB_WORK:-/var/tmp/colo-xenlab-run}
NOSHADOW=${COLO_XENLAB_NOSHADOW:-1}
BOOT_TIMEOUT=${COLO_XENLAB_TIMEOUT:-720}

t() { printf '[xenlab %6.1fs] %s\n' "$(awk "BEGIN{print $(date +%s.%N) - $T0}")" "$*"; }
die() { echo "xenlab: $*" >&2; exit 2; }

[ "$(id -u)" = 0 ] || die "needs root (debootstrap, chroot, mount --bind)"

# ---- host tools ---------------------------------------------------------------
need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
command -v cpio >/dev/null || need+=(cpio)
dpkg -s busybox-static >/dev/null 2>&1 || need+=(busybox-static)   # the guests' initramfs
if [ ${#need[@]} -gt 0 ]; then
  t "apt-get install ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y --no-install-recommends "${need[@]}" >/dev/null 2>&1 \
    || { apt-get update >/dev/null && apt-get install -y --no-install-recommends "${need[@]}" >/dev/null; }
fi
BUSYBOX=/bin/busybox

# ---- the dom0 image, cached on its inputs -----------------------------------
PINNED_SUM=none
[ -f "$PINNED_DEB" ] && PINNED_SUM=$(sha256sum "$PINNED_DEB" | cut -d' ' -f1)
KEY=$( { cat "$HERE/image.sh"; echo "$PINNED_SUM"; } | sha256sum | cut -c1-16)
IMG=$CACHE_ROOT/$KEY
if [ ! -f "$IMG/DONE" ]; then
  t "building the dom0 image into $IMG (debootstrap; cached for later runs)"
  mkdir -p "$CACHE_ROOT"
  exec 9>"$CACHE_ROOT/.lock"; flock 9
  [ -f "$IMG/DONE" ] || MIRROR=${MIRROR:-http://deb.debian.org/debian} "$HERE/image.sh" "$IMG" "$PINNED_DEB"
  flock -u 9
else
  t "dom0 image cached: $IMG"
fi

# ---- this run: the project on a second disk ------------------------------------
cleanup() { mountpoint -q "$IMG/rootfs/opt/colo" && umount "$IMG/rootfs/opt/colo" || true; }
trap cleanup EXIT
rm -rf "$WORK"; mkdir -p "$WORK/proj/tests" "$WORK/proj/lab"
SRC=${COLO_XENLAB_SRC:-$REPO}   # another tree's colo_plane/ + native/ (debugging the lab)
cp -a "$SRC/colo_plane" "$SRC/native" "$WORK/proj/"
cp -a "$REPO/tests/xen" "$WORK/proj/tests/"
chmod +x "$WORK/proj/tests/xen/dom0-init"
find "$WORK/proj" -name __pycache__ -prune -exec rm -rf {} + -o -name '*.so' -exec rm -f {} + -o -name '*.o' -exec rm -f {} +
rm -f "$WORK/proj/colo_plane/_native/_lib.c"

t "guest initrd (busybox + tests/xen/guest-init)"
G=$WORK/guest; mkdir -p "$G/bin" "$G/proc" "$G/sys" "$G/dev" "$G/tmp"
cp "$BUSYBOX" "$G/bin/busybox"
for a in sh mount echo sleep cat head yes seq; do ln -s busybox "$G/bin/$a"; done
cp "$HERE/guest-init" "$G/init"; chmod +x "$G/init"
(cd "$G" && find . | cpio -o -H newc 2>/dev/null | gzip -1) > "$WORK/proj/lab/guest-initrd.gz"

t "building the cffi module in a chroot of the dom0 image"
mount --bind "$WORK/proj" "$IMG/rootfs/opt/colo"
chroot "$IMG/rootfs" sh -c 'cd /opt/colo && python3 native/build_native.py' > "$WORK/build.log" 2>&1 \
  || { tail -30 "$WORK/build.log"; die "cffi build in dom0 chroot failed"; }
umount "$IMG/rootfs/opt/colo"
grep -q "xen backend built" "$WORK/build.log" || die "xen backend not built in dom0 (see $WORK/build.log)"
mkfs.ext4 -q -F -L colo -d "$WORK/proj" "$WORK/proj.img" 256M >/dev/null

# ---- boot -----------------------------------------------------------------------
# boot NAME XEN_ELF MODE: one QEMU, serial log in $WORK/NAME.log
boot() {
  local name=$1 xen=$2 mode=$3 log=$WORK/$1.log
  local xen_args="console=com1 com1=115200,8n1 dom0_mem=1024M,max:1024M dom0_max_vcpus=2 loglvl=all guest_loglvl=warning noreboot"
  local dom0_args="root=/dev/vda rw console=hvc0 earlyprintk=xen loglevel=4 init=/sbin/colo-lab-init colo_lab=$mode"
  # -cpu qemu64: max/EPYC crash a PV dom0 under TCG (SMAP); qemu64 has SVM,
  # so HVM/PVH guests run on shadow paging.
  local st
  set +e +o pipefail
  timeout -k 10 "$BOOT_TIMEOUT" qemu-system-x86_64 -machine q35 -cpu qemu64 -m 3072 -smp 2 \
    -nographic -no-reboot -serial mon:stdio -display none \
    -kernel "$xen" -append "$xen_args" \
    -initrd "$IMG/dom0-vmlinuz $dom0_args,$IMG/dom0-initrd" \
    -drive file="$IMG/rootfs.img",if=virtio,format=raw,snapshot=on \
    -drive file="$WORK/proj.img",if=virtio,format=raw \
    -net none </dev/null 2>&1 \
    | perl -MTime::HiRes=time -ne 'BEGIN{$|=1;$t0=time} printf "[%7.2f] %s", time-$t0, $_' > "$log"
  st=${PIPESTATUS[0]}
  set -e -o pipefail
  echo "qemu exit status: $st" >> "$log"
}

# ---- verdict --------------------------------------------------------------------
# report NAME: PASS/FAIL per test and the figures from a boot's serial log.
report() {
  local log=$WORK/$1.log
  { grep -a 'COLO-XENLAB-RESULT ' "$log" || echo "  (no test results: dom0 did not get to run the tests)"; } \
    | sed 's/.*COLO-XENLAB-RESULT /  /' | tr -d '\r'
  { grep -a 'COLO-XENLAB-FIGURE' "$log" || true; } | sed 's/.*COLO-XENLAB-FIGURE /  figure: /' | tr -d '\r'
  { grep -a 'COLO-XENLAB-NOTE' "$log" || true; } | sed 's/.*COLO-XENLAB-NOTE /  seen: /' | tr -d '\r'
}
verdict() {  # verdict NAME -> the rc dom0 printed, 3 if none
  local v; v=$(grep -aoE '^(\[ *[0-9.]+\] )?COLO-XENLAB-VERDICT rc=[0-9]+' "$WORK/$1.log" | tail -1 | sed 's/.*rc=//')
  echo "${v:-3}"
}
verdict_time() {  # host seconds from QEMU start to the verdict line
  grep -a 'COLO-XENLAB-VERDICT rc=' "$WORK/$1.log" | tail -1 | sed -E 's/^\[ *([0-9.]+)\].*/\1/'
}

rc=0
{
  echo "colo-plane xen lab report ($(date -u +%FT%TZ)); logs in $WORK"
} > "$WORK/report.txt"

t "boot 1: Xen with shadow paging ($(basename "$IMG")/xen.elf), PVH + PV guests"
boot main "$IMG/xen.elf" main
v=$(verdict main)
{
  echo "boot 1 (shadow paging Xen): verdict rc=$v, boot-to-verdict $(verdict_time main)s"
  report main
} | tee -a "$WORK/report.txt"
[ "$v" = 0 ] || { rc=1; echo "  serial log tail:"; tail -40 "$WORK/main.log" | sed 's/^/    /'; }

NOSHADOW_ELF=
if [ "$NOSHADOW" = 1 ]; then
  NOSHADOW_ELF=$("$HERE/noshadow-xen.sh" "$CACHE_ROOT" "$IMG") || NOSHADOW_ELF=
fi
if [ -n "$NOSHADOW_ELF" ]; then
  t "boot 2: Debian's Xen security build without shadow paging ($NOSHADOW_ELF), one PV guest"
  boot noshadow "$NOSHADOW_ELF" noshadow
  v=$(verdict noshadow)
  {
    echo "boot 2 (Xen without shadow paging): verdict rc=$v, boot-to-verdict $(verdict_time noshadow)s"
    report noshadow
  } | tee -a "$WORK/report.txt"
  [ "$v" = 0 ] || { rc=1; echo "  serial log tail:"; tail -40 "$WORK/noshadow.log" | sed 's/^/    /'; }
elif [ "$NOSHADOW" = 1 ]; then
  echo "boot 2 skipped: no Xen 4.17 build without shadow paging found (see noshadow-xen.sh)" \
    | tee -a "$WORK/report.txt"
fi
total=$(awk "BEGIN{printf \"%.0f\", $(date +%s.%N) - $T0}")
echo "verdict: $([ $rc = 0 ] && echo PASS || echo FAIL), ${total}s from start to verdict (image build, if any, included)" \
  | tee -a "$WORK/report.txt"
t "done: $([ $rc = 0 ] && echo PASS || echo FAIL) (report: $WORK/report.txt)"
exit $rc
