#!/bin/bash
# dracut module: bcache-tools (Rust). Installed as
# /usr/lib/dracut/modules.d/90bcachetab/ (module-setup.sh, bcache-wait.sh,
# bcache-timeout.sh, bcache-root.sh).
#
# Puts in the initramfs what it takes to boot a root file system on bcache,
# formatted (69-bcache.rules registers it) or adopted through /etc/bcachetab
# (bcachetab(5): 61-bcachetab.rules runs `bcache tab apply --udev`):
# /usr/sbin/bcache (+ bcachetab-apply), the rules, /etc/bcachetab, the state
# file as a copy whose first line is records::COPY_HEADER (the tool reads it
# conservatively: the system may have changed since; rebuild the initramfs
# after `bcache run --force`, adopt, attach, detach, tab identify), the
# modules bcache, dm_mod and loop as modprobe resolves them (a patched
# bcache.ko in updates/ is the one taken), device-mapper's rules and dmsetup
# for the header layout.
# timeout= devices: under systemd in the initramfs the rule starts
# bcachetab-wait@.service; without systemd, bcache-wait.sh in the initqueue
# runs `bcache tab wait --all` (bounded by the longest timeout; writeback
# devices wait for their set). When the root does not come, bcache-timeout.sh
# prints `bcache tab list` (which device waits for what). bcache-root.sh
# (pre-mount) refuses to mount a bcachetab line's raw device as the root.
#
# What the tool records here (a stale mark, an attach, a grown size, the
# kernel's state changes) goes to the copy and to /run/bcache/state.journal.
# switch_root (util-linux's, from dracut's shell init) moves /run into the
# new root, so the journal survives, and bcachetab-reconcile.service merges it
# into the system's /var/lib/bcache/state; the copy in the image is not
# changed by that. A copy registers every device with a set but a writeback
# one stale: it may predate a stale mark.
#
# Not named "bcache": dracut ships a 90bcache of its own (formatted devices,
# through /usr/lib/udev/probe-bcache and bcache-register, which the README
# links to our binary); this module must not overwrite it.

BCACHETAB=/etc/bcachetab
BCACHE_STATE=/var/lib/bcache/state
# Must be records::COPY_HEADER (src/tab/records.rs) to the byte.
BCACHE_COPY_HEADER="# bcache state: a copy, possibly older than the system's"

bcachetab_has_lines() {
    [[ -r $dracutsysrootdir$BCACHETAB ]] && grep -q '^[[:space:]]*[^#[:space:]]' "$dracutsysrootdir$BCACHETAB"
}

# called by dracut
check() {
    require_binaries /usr/sbin/bcache || return 1
    # Adopted devices: always (the root may be one; udev decides at boot).
    bcachetab_has_lines && return 0
    # In host-only mode, only when a file system the host needs is on bcache.
    if [[ $hostonly ]] || [[ $mount_needs ]]; then
        for fs in "${host_fs_types[@]}"; do
            [[ $fs == bcache ]] && return 0
        done
        return 255
    fi
    return 0
}

# called by dracut
depends() {
    local deps="udev-rules"
    if bcachetab_has_lines && type -P dmsetup > /dev/null; then
        deps+=" dm"
    fi
    echo "$deps"
    return 0
}

# called by dracut
installkernel() {
    hostonly='' instmods bcache
    if bcachetab_has_lines; then
        hostonly='' instmods dm_mod loop
    fi
}

# called by dracut
install() {
    inst_multiple /usr/sbin/bcache
    ln_r /usr/sbin/bcache /usr/sbin/bcachetab-apply
    inst_rules 69-bcache.rules
    bcachetab_has_lines || return 0

    inst_rules 61-bcachetab.rules
    inst_simple "$BCACHETAB"
    # bcache-root.sh quotes the root's line when it refuses the raw device
    inst_multiple grep
    mkdir -p "$initdir${BCACHE_STATE%/*}"
    {
        echo "$BCACHE_COPY_HEADER"
        if [[ -r $dracutsysrootdir$BCACHE_STATE ]]; then
            grep -v '^#' "$dracutsysrootdir$BCACHE_STATE"
        fi
    } > "$initdir$BCACHE_STATE"
    # The header layout: a loop device and a dm-linear table, whose udev
    # cookies the tool waits for (the dm module brings the same when present).
    inst_multiple -o dmsetup
    inst_rules 10-dm.rules 13-dm-disk.rules 55-dm.rules 60-persistent-storage-dm.rules 95-dm-notify.rules
    if dracut_module_included "systemd"; then
        inst_multiple -o "$systemdsystemunitdir/bcachetab-wait@.service" systemctl
    fi
    inst_hook initqueue/settled 90 "$moddir/bcache-wait.sh"
    inst_hook initqueue/timeout 90 "$moddir/bcache-timeout.sh"
    inst_hook pre-mount 90 "$moddir/bcache-root.sh"
}
