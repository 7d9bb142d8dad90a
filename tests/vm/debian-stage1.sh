#!/bin/sh
# /init of a Debian userland guest (`Vm::debian`), packed into the initramfs by
# tests/common/vm.rs: the busybox first stage. It builds the root file system
# and hands over to the Debian userland (switch_root):
#
#   /           overlay: lower = the host's / over virtio-9p (tag hostroot, read-only),
#               upper  = /upper on the ext4 system disk (virtio-blk, serial
#                        $VM_SYSTEM_SERIAL), so /etc and /var changes survive into the
#                        next boot of the same disk image
#   /lib/modules the kernel package's module tree over virtio-9p (tag modules,
#               read-only; with depmod's indexes, overridden modules in updates/)
#   /run/bcache-vm/system   the system disk (upper/ and work/ of the overlay)
#   /run/bcache-vm/host     the host's / as is (read-only)
#
# Then the files of /payload (the harness's scripts and units, our binary, the
# test's files) are copied over the new root, and the second stage starts: systemd
# (VM_INIT=systemd, default target bcache-vm.target) or
# /usr/lib/bcache-vm/guest.sh (VM_INIT=udevd), both in the Debian userland.
# A failure here reports "@@STATUS 125" on the console (no ports yet) and powers off.

export PATH=/usr/sbin:/usr/bin:/sbin:/bin
umask 022

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /run
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run

say() { echo "vm-stage1: $*" > /dev/console; }
die() {
    say "$*"
    echo "@@STATUS 125" > /dev/console
    poweroff -f
    exit 125
}

. /etc/vm.conf

now_cs() {
    read -r up _ < /proc/uptime
    echo $(( ${up%.*} * 100 + 1${up#*.} - 100 ))
}

while read -r ko; do
    [ -n "$ko" ] || continue
    insmod "/lib/modules/$ko" || die "insmod $ko failed"
done < /lib/modules/load-order

# The system disk, found by its virtio serial (the test's disks keep vda, vdb, ...).
deadline=$(( $(now_cs) + 2000 ))
sysdev=
while [ -z "$sysdev" ]; do
    for s in /sys/block/vd*/serial; do
        [ -r "$s" ] && [ "$(cat "$s")" = "$VM_SYSTEM_SERIAL" ] || continue
        d=${s%/serial}
        d=/dev/${d##*/}
        [ -b "$d" ] && sysdev=$d
    done
    [ -n "$sysdev" ] && break
    [ "$(now_cs)" -gt "$deadline" ] && die "system disk (serial $VM_SYSTEM_SERIAL) did not appear"
    sleep 0.01
done

mkdir -p /sysdisk /lower /newroot
mount -t ext4 "$sysdev" /sysdisk || die "cannot mount the system disk $sysdev (make it with vm::system_disk)"
mkdir -p /sysdisk/upper /sysdisk/work
# cache=loose: the host's files do not change under a test
mount -t 9p -o ro,trans=virtio,version=9p2000.L,msize=512000,cache=loose hostroot /lower || die "cannot mount the host's / (9p)"
mount -t overlay overlay -o lowerdir=/lower,upperdir=/sysdisk/upper,workdir=/sysdisk/work /newroot || die "cannot mount the overlay root"
mkdir -p /newroot/lib/modules || die "no /lib/modules in the new root"
mount -t 9p -o ro,trans=virtio,version=9p2000.L,msize=512000,cache=loose modules /newroot/lib/modules || die "cannot mount the module tree (9p)"

# The host may be a container: systemd would believe it is in one too (no udev, no
# kernel command line). /tmp is a tmpfs, as with tmp.mount: the host's /tmp is not for
# the guest, and systemd-tmpfiles --boot would empty it through the overlay (minutes).
rm -f /newroot/.dockerenv /newroot/run/.containerenv
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /newroot/tmp || die "cannot mount /tmp"

# Defaults that a test's own files (and earlier boots of the same disk) win over:
# the host's fstab names the host's disks.
[ -e /sysdisk/upper/etc/fstab ] || echo "# bcache-vm: no file systems (the host's fstab is not for this guest)" > /newroot/etc/fstab

# The payload over the new root, file by file (parents through the root's own symlinks,
# e.g. /lib -> usr/lib).
# Files under /run go to the runtime /run (moved below), not to the system disk.
install_payload() {
    find . ! -type d | while read -r f; do
        f=${f#./}
        case $f in run/*) [ "$1" = run ] || continue ;; *) [ "$1" = root ] || continue ;; esac
        mkdir -p "/newroot/${f%/*}" && rm -rf "/newroot/$f" && cp -a "$f" "/newroot/$f" || say "cannot install /$f"
    done
}
cd /payload || die "no payload"
install_payload root

mount --move /run /newroot/run || die "cannot move /run"
install_payload run
cd /
mkdir -p /newroot/run/bcache-vm/system /newroot/run/bcache-vm/host
mount --move /sysdisk /newroot/run/bcache-vm/system
mount --move /lower /newroot/run/bcache-vm/host
echo "$sysdev" > /newroot/run/bcache-vm/system-dev
for m in dev proc sys; do
    mount --move "/$m" "/newroot/$m" || die "cannot move /$m"
done

say "root ready at $(cat /newroot/proc/uptime | cut -d' ' -f1) s, starting $VM_INIT"
if [ "$VM_INIT" = systemd ]; then
    exec switch_root /newroot /lib/systemd/systemd
else
    exec switch_root /newroot /bin/bash /usr/lib/bcache-vm/guest.sh pid1
fi
echo "@@STATUS 125" > /newroot/dev/console
poweroff -f
