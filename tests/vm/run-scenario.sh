# Runs the test's scenario (/scenario.sh, or $VM_SCENARIO) in the guest, started by
# /init (busybox sh) or guest.sh (bash, Debian userland) with stdout on /dev/vm-out
# and stderr on /dev/vm-err.
# Rules: `set -e` (a failing command ends the scenario with its status), the
# helpers of guest-lib.sh are defined, the working directory is /tmp, and with
# VM_TRACE=1 every command is traced (`set -x`) to stderr.
set -e
. /usr/lib/bcache-vm/guest-lib.sh
trap '_vm_rc=$?; if [ "$_vm_rc" != 0 ]; then echo "vm: scenario failed with exit status $_vm_rc" >&2; fi' EXIT
if [ "${VM_TRACE:-0}" = 1 ]; then
    set -x
fi
. "${VM_SCENARIO:-/scenario.sh}"
