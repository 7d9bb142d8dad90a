# Shell helpers for test scenarios in the QEMU guest (busybox ash).
# Sourced before /scenario.sh; installed in the guest as /usr/lib/bcache-vm/guest-lib.sh.
#
# Output protocol (stdout, parsed by tests/common/vm.rs):
#   @@ KEY VALUE          emit KEY VALUE       -> VmOutput::value("KEY")
#   @@BEGIN NAME / @@END NAME                  -> VmOutput::section("NAME")
#   @@CHECK PASS NAME / @@CHECK FAIL NAME ...  -> VmOutput::checks(); a FAIL fails assert_ok()
# dmesg marks (kmsg_mark NAME) go into the kernel log as "@@MARK NAME"
#                                            -> VmOutput::dmesg_since("NAME")
# Helpers that poll run in a subshell with tracing off, to keep the trace short.

# Default bound, in seconds, for the wait_* helpers (TCG is slow: be generous).
: "${VM_WAIT_TIMEOUT:=30}"

# fail MESSAGE...: end the scenario with status 1.
fail() {
    echo "FAIL: $*" >&2
    exit 1
}

# emit KEY VALUE...: a "@@ KEY VALUE" line for the host.
emit() {
    _k=$1
    shift
    echo "@@ $_k $*"
}

# begin NAME / end NAME: delimit a section of stdout for the host.
begin() { echo "@@BEGIN $1"; }
end() { echo "@@END $1"; }

# section NAME CMD...: run CMD with its stdout inside section NAME (stderr stays
# on stderr: add 2>&1 inside CMD to capture it). Returns CMD's status, after
# closing the section.
section() {
    _s=$1
    shift
    echo "@@BEGIN $_s"
    _rc=0
    "$@" || _rc=$?
    echo "@@END $_s"
    return $_rc
}

# check NAME CMD...: run CMD; report PASS if it succeeds, FAIL otherwise.
# Does not stop the scenario; the host fails the test on any FAIL.
check() {
    _c=$1
    shift
    if "$@"; then
        echo "@@CHECK PASS $_c"
    else
        echo "@@CHECK FAIL $_c (exit status $?)"
    fi
    return 0
}

# check_fails NAME CMD...: PASS if CMD fails (status != 0).
check_fails() {
    _c=$1
    shift
    if "$@"; then
        echo "@@CHECK FAIL $_c (succeeded, expected a failure)"
    else
        echo "@@CHECK PASS $_c"
    fi
    return 0
}

# check_eq NAME EXPECTED ACTUAL: PASS if the two strings are equal.
check_eq() {
    if [ "$2" = "$3" ]; then
        echo "@@CHECK PASS $1"
    else
        echo "@@CHECK FAIL $1 (expected '$2', got '$3')"
    fi
    return 0
}

# now_cs: hundredths of a second since boot.
now_cs() {
    read -r _up _idle < /proc/uptime
    echo $(( ${_up%.*} * 100 + 1${_up#*.} - 100 ))
}

# wait_until TIMEOUT_S CMD...: run CMD (output discarded) until it succeeds;
# fail the scenario if it has not within TIMEOUT_S seconds.
wait_until() (
    set +x
    _deadline=$(( $(now_cs) + $1 * 100 ))
    shift
    until "$@" > /dev/null 2>&1; do
        if [ "$(now_cs)" -gt "$_deadline" ]; then
            echo "wait_until: '$*' did not succeed in time" >&2
            exit 1
        fi
        sleep 0.02
    done
)

# wait_for PATH [TIMEOUT_S]: wait until PATH exists.
wait_for() {
    wait_until "${2:-$VM_WAIT_TIMEOUT}" test -e "$1" || fail "wait_for: $1 did not appear within ${2:-$VM_WAIT_TIMEOUT}s"
}

# wait_gone PATH [TIMEOUT_S]: wait until PATH no longer exists.
wait_gone() {
    wait_until "${2:-$VM_WAIT_TIMEOUT}" test ! -e "$1" || fail "wait_gone: $1 still there after ${2:-$VM_WAIT_TIMEOUT}s"
}

# register DEV...: register devices with bcache through sysfs.
register() {
    for _d in "$@"; do
        echo "$_d" > /sys/fs/bcache/register
    done
}

# bcache_of DEV [TIMEOUT_S]: wait until backing device DEV (e.g. /dev/vdb) runs
# as a bcache device and print that device's path (e.g. /dev/bcache0).
bcache_of() {
    _b=/sys/block/${1##*/}/bcache/dev
    wait_for "$_b" "${2:-$VM_WAIT_TIMEOUT}"
    _n=$(readlink "$_b")
    _n=/dev/${_n##*/}
    wait_for "$_n" "${2:-$VM_WAIT_TIMEOUT}"
    echo "$_n"
}

# load_module NAME: insmod a fetched module and what it depends on, unless loaded.
# (/init loads virtio_blk, dm_mod, loop and bcache; ext4 and xfs are here on demand.)
# In a Debian userland guest: modprobe NAME (the whole module tree is there).
load_module() (
    set +x
    if [ "${VM_USERLAND:-busybox}" = debian ]; then
        exec modprobe "$1"
    fi
    _m=$(echo "$1" | tr - _)
    [ -d "/sys/module/$_m" ] && [ -e "/sys/module/$_m/initstate" ] && exit 0
    _line=$(grep "^$_m " /lib/modules/deps) || { echo "load_module: no module $1 in the guest" >&2; exit 1; }
    set -- $_line
    _file=$2
    shift 2
    for _d in "$@"; do
        load_module "$_d"
    done
    insmod "/lib/modules/$_file"
)

# kmsg_mark NAME: put "@@MARK NAME" into the kernel log.
kmsg_mark() {
    echo "@@MARK $1" > /dev/kmsg
}

# dmesg_since NAME: kernel log lines after the last "@@MARK NAME".
dmesg_since() {
    dmesg | awk -v m="@@MARK $1" '
        { line[NR] = $0; if (substr($0, length($0) - length(m) + 1) == m) n = NR }
        END { if (!n) { print "dmesg_since: no mark " m > "/dev/stderr"; exit 1 }
              for (i = n + 1; i <= NR; i++) print line[i] }'
}

# dmesg_section NAME [MARK]: print the kernel log (since MARK if given) in section NAME.
dmesg_section() {
    if [ -n "$2" ]; then
        section "$1" dmesg_since "$2"
    else
        section "$1" dmesg
    fi
}

# power_cut: stop the machine now, like pulling the plug: no sync, no bcache
# shutdown, no unmount (sysrq b resets the machine; QEMU runs with -no-reboot, so it
# exits). Reports status 0 and the dmesg first, so the host sees a success; what the
# scenario wrote on stdout and stderr before is on the host already (virtio port
# writes complete when the host has the data).
power_cut() {
    {
        echo "@@DMESG-BEGIN"
        dmesg
        echo "@@DMESG-END"
        echo "@@STATUS 0"
    } > /dev/vm-meta
    echo b > /proc/sysrq-trigger
    sleep 60   # not reached
}
