#!/bin/sh
# /init of the test guest (PID 1), packed into the initramfs by tests/common/vm.rs.
#
# Channels to the host (virtio-serial ports, each a file on the host):
#   /dev/vm-out   stdout of the scenario
#   /dev/vm-err   stderr of the scenario (and its `set -x` trace)
#   /dev/vm-meta  written by this script after the scenario: the guest's dmesg
#                 between "@@DMESG-BEGIN" and "@@DMESG-END", then "@@STATUS N"
# The serial console (ttyS0) carries the kernel's messages and this script's own,
# "@@SCENARIO-START <uptime>" among them.
# A virtio port can be open in one process at a time (EBUSY otherwise); the
# scenario inherits out and err as its stdout and stderr.
#
# /etc/vm.conf (generated) sets VM_TRACE, VM_PORTS and the scenario's environment.
# Not `set -e`: PID 1 must always reach the report and the power-off.

export PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root TERM=dumb
umask 022

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm /run /tmp /mnt /root
mount -t tmpfs -o mode=0755 tmpfs /run
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null

say() { echo "vm-init: $*" > /dev/console; }

# Final report, then a hard power-off (no bcache shutdown, like pulling the plug
# after a sync). -no-reboot on the QEMU side turns a reboot into an exit too.
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
    poweroff -f
    # not reached; exiting PID 1 panics the kernel, which (panic=-1) also ends QEMU
    exit "$1"
}

. /etc/vm.conf

# Time in hundredths of a second since boot.
now_cs() {
    read -r up _ < /proc/uptime
    echo $(( ${up%.*} * 100 + 1${up#*.} - 100 ))
}

# The ports are announced by the device after the driver is up, asynchronously:
# wait for them, within a bound.
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

while read -r ko; do
    [ -n "$ko" ] || continue
    if ! insmod "/lib/modules/$ko"; then
        say "insmod $ko failed"
        finish 125
    fi
done < /lib/modules/load-order

# the host tells a crash at boot from one in the scenario by this line
echo "@@SCENARIO-START $(cut -d' ' -f1 /proc/uptime)" > /dev/console
cd /tmp || finish 124
sh /usr/lib/bcache-vm/run-scenario.sh < /dev/null > /dev/vm-out 2> /dev/vm-err
finish $?
