#!/usr/bin/env bash
# Provision a GIMP 3 root for the end-to-end tests: a Debian root made with
# debootstrap, cached outside the checkout and reused by later runs.
#
#   provision.sh 3.0   -> Debian 13 "trixie", GIMP 3.0.x
#   provision.sh 3.2   -> Debian "forky",     GIMP 3.2.x
#
# Prints the root's path on stdout. Needs root and debootstrap (installed
# with apt-get when missing). Building is atomic: a root appears under its
# final name only once it is complete, so an interrupted run is redone.
set -euo pipefail

version=${1:?usage: provision.sh 3.0|3.2}
cache=${NST_GIMP_CACHE:-/var/cache/nst-gimp}
mirror=${NST_DEBIAN_MIRROR:-http://deb.debian.org/debian}

case "$version" in
  3.0) suite=trixie; script=trixie ;;
  3.2) suite=forky;  script=sid ;;     # bookworm's debootstrap has no forky script
  *) echo "provision.sh: unknown GIMP version '$version' (use 3.0 or 3.2)" >&2; exit 2 ;;
esac

root="$cache/$suite"
log() { echo "provision[$suite]: $*" >&2; }

add_ssh_client() {  # roots built before the SSH tests lack ssh: add it once
  [ -x "$root/usr/bin/ssh" ] && return 0
  log "adding openssh-client (the SSH end-to-end tests)"
  local mounted=0
  mount -t proc proc "$root/proc" 2>/dev/null && mounted=1
  chroot "$root" env DEBIAN_FRONTEND=noninteractive apt-get -o Acquire::Check-Valid-Until=false \
    -q -y update >&2 || true
  chroot "$root" env DEBIAN_FRONTEND=noninteractive apt-get -o APT::Install-Recommends=false \
    -q -y install openssh-client >&2
  chroot "$root" apt-get clean >&2
  [ $mounted = 0 ] || umount "$root/proc"
}

if [ -x "$root/usr/bin/gimp-console" ] && [ -f "$root/.nst-complete" ]; then
  if [ ! -x "$root/usr/bin/ssh" ]; then
    exec 9>"$cache/.$suite.lock"
    flock 9
    add_ssh_client
  fi
  echo "$root"; exit 0
fi
if [ "$(id -u)" != 0 ]; then
  log "needs root to build a Debian root; install GIMP 3 yourself or run as root"; exit 3
fi
if ! command -v debootstrap >/dev/null; then
  log "installing debootstrap"
  apt-get update -qq >&2 && apt-get install -y -qq debootstrap >&2
fi

mkdir -p "$cache"
exec 9>"$cache/.$suite.lock"
flock 9
if [ -f "$root/.nst-complete" ]; then echo "$root"; exit 0; fi

work="$cache/$suite.partial"
rm -rf "$root" "$work"
scripts=/usr/share/debootstrap/scripts
log "debootstrap $suite (a few minutes)"
# Only the base system here: debootstrap's resolver skips alternatives
# (dbus-session-bus) that GIMP's GTK needs; apt inside resolves them.
debootstrap --variant=minbase "$suite" "$work" "$mirror" "$scripts/$script" >&2

mount -t proc proc "$work/proc"
trap 'umount "$work/proc" 2>/dev/null || true' EXIT
apt_opts=(-o Acquire::Check-Valid-Until=false -o APT::Install-Recommends=false -y -q)
log "installing GIMP, typelibs, torch and tools"
chroot "$work" apt-get "${apt_opts[@]}" update >&2
chroot "$work" env DEBIAN_FRONTEND=noninteractive apt-get "${apt_opts[@]}" install \
  gimp python3-gi gir1.2-gimp-3.0 python3-numpy python3-pil \
  gir1.2-freedesktop gir1.2-gtk-3.0 gir1.2-gegl-0.4 gir1.2-babl-0.1 \
  python3-torch python3-torchvision python3-venv python3-pip python3-setuptools \
  python3-png python3-tifffile ca-certificates openssh-client >&2
chroot "$work" apt-get clean >&2
umount "$work/proc"
touch "$work/.nst-complete"
mv "$work" "$root"
log "ready: $root"
echo "$root"
