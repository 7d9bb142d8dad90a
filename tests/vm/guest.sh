#!/bin/bash
# Second stage of a Debian userland guest (`Vm::debian`), in the Debian root built by
# debian-stage1.sh; installed as /usr/lib/bcache-vm/guest.sh. Two ways in:
#
#   guest.sh service   ExecStart of bcache-vm-scenario.service, under systemd as PID 1
#                      (VM_INIT=systemd): udev was started by systemd's own units
#   guest.sh pid1      PID 1 itself (VM_INIT=udevd): mounts, loads VM_MODULES, starts
#                      systemd-udevd --daemon, `udevadm trigger --action=add`
#
# Both then wait for `udevadm settle`, run the scenario like /init does in a busybox
# guest (same virtio ports: out, err, meta; same run-scenario.sh and guest-lib.sh,
# under bash), write the dmesg and "@@STATUS N" on meta, and shut down: under systemd
# with `systemctl poweroff` (every unit stopped, file systems unmounted); as PID 1 by
# stopping udevd, syncing and remounting read-only, then `busybox poweroff -f`.
# `power_cut` in a scenario skips all that (sysrq b: no sync, no unmount).
# The console gets "@@SCENARIO-START <uptime>" (boot time, parsed by the host).

mode=${1:-service}
export PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root TERM=dumb LANG=C.UTF-8
umask 022

say() { echo "vm-guest: $*" > /dev/console; }

. /usr/lib/bcache-vm/vm.conf

now_cs() {
    read -r up _ < /proc/uptime
    echo $(( ${up%.*} * 100 + 10#${up#*.} ))
}

shutdown_now() {
    if [ "$mode" = service ]; then
        systemctl poweroff --no-block || systemctl poweroff --force --force
        exit 0
    fi
    udevadm control --exit 2>/dev/null
    sync
    mount -o remount,ro / 2>/dev/null
    mount -o remount,ro /run/bcache-vm/system 2>/dev/null || say "system disk still read-write at power-off"
    sync
    busybox poweroff -f
    exit "$1"   # PID 1 exiting panics the kernel, which ends QEMU too (panic=-1, -no-reboot)
}

finish() {
    sync
    if [ -c /dev/vm-meta ]; then
        {
            echo "@@DMESG-BEGIN"
            dmesg
            echo "@@DMESG-END"
            echo "@@STATUS $1"
        } > /dev/vm-meta
    fi
    echo "@@STATUS $1" > /dev/console
    shutdown_now "$1"
}

if [ "$mode" = pid1 ]; then
    mkdir -p /dev/pts /dev/shm
    mount -t devpts -o gid=5,mode=620 devpts /dev/pts
    mount -t tmpfs -o nosuid,nodev tmpfs /dev/shm
    mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
    mount -t configfs configfs /sys/kernel/config 2>/dev/null
    mount -o remount,rw / 2>/dev/null
    hostname bcache-vm
    for m in $VM_MODULES; do
        modprobe "$m" || { say "modprobe $m failed"; finish 125; }
    done
    /lib/systemd/systemd-udevd --daemon || { say "systemd-udevd did not start"; finish 125; }
    udevadm trigger --type=subsystems --action=add
    udevadm trigger --type=devices --action=add
fi
udevadm settle --timeout=120 || say "udevadm settle timed out"

# The ports (udev also links them as /dev/virtio-ports/NAME; do not depend on it).
deadline=$(( $(now_cs) + 2000 ))
for name in $VM_PORTS; do
    while :; do
        for p in /sys/class/virtio-ports/*; do
            [ -r "$p/name" ] || continue
            if [ "$(cat "$p/name")" = "$name" ] && [ -c "/dev/${p##*/}" ]; then
                ln -sf "/dev/${p##*/}" "/dev/vm-$name"
                break
            fi
        done
        [ -e "/dev/vm-$name" ] && break
        if [ "$(now_cs)" -gt "$deadline" ]; then
            say "virtio port $name did not appear"
            finish 126
        fi
        sleep 0.01
    done
done

set -a
. /usr/lib/bcache-vm/vm.conf
set +a
echo "@@SCENARIO-START $(cut -d' ' -f1 /proc/uptime)" > /dev/console
cd /tmp || finish 124
bash /usr/lib/bcache-vm/run-scenario.sh < /dev/null > /dev/vm-out 2> /dev/vm-err
finish $?
