#!/bin/bash
# Prints the path of a Xen 4.17 hypervisor (ELF) built WITHOUT shadow
# paging, for the lab's second boot, or fails if there is none.
#
# The dom0 image's hypervisor ($2/xen-noshadow.elf when the archive's own
# build lacks shadow paging), else Debian's newest 4.17 package as apt on
# this host sees it (bookworm-security's 4.17.7+ dropped CONFIG_SHADOW_PAGING,
# shared/xenlab/README.md), fetched once with `apt-get download` and kept
# in $1/noshadow-<version>/.  Needs root.
set -euo pipefail
CACHE_ROOT=$1
IMG=$2
[ -f "$IMG/xen-noshadow.elf" ] && { echo "$IMG/xen-noshadow.elf"; exit 0; }
PKG=xen-hypervisor-4.17-amd64
VER=$(apt-cache policy "$PKG" 2>/dev/null | awk '/Candidate:/ {print $2}')
[ -n "$VER" ] && [ "$VER" != "(none)" ] || { echo "noshadow-xen: apt knows no $PKG" >&2; exit 1; }
D=$CACHE_ROOT/noshadow-$VER
if [ ! -f "$D/DONE" ]; then
  rm -rf "$D"; mkdir -p "$D/dl"; chmod 777 "$D/dl"
  (cd "$D/dl" && apt-get download "$PKG=$VER" >/dev/null 2>&1) || { echo "noshadow-xen: apt-get download $PKG=$VER failed" >&2; exit 1; }
  dpkg-deb -x "$D"/dl/*.deb "$D/x"
  if grep -q '^CONFIG_SHADOW_PAGING=y' "$D"/x/boot/xen-*.config; then
    touch "$D/HAS_SHADOW"
  else
    zcat "$D"/x/boot/xen-4.17-amd64.gz > "$D/xen.elf"
  fi
  rm -rf "$D/x" "$D/dl"; touch "$D/DONE"
fi
[ -f "$D/xen.elf" ] || { echo "noshadow-xen: $PKG $VER has shadow paging" >&2; exit 1; }
echo "$D/xen.elf"
