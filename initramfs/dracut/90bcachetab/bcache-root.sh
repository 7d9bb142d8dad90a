#!/bin/sh
# dracut pre-mount hook (90bcachetab): never mount the raw device of a
# bcachetab line as the root file system (initramfs-tools-local-premount
# does the same for initramfs-tools). Sourced by dracut.
#
# root=UUID= and root=LABEL= wait for /dev/disk/by-uuid and by-label links,
# which 61-bcachetab.rules gives the bcache device, not the raw one; but
# root=/dev/sdX, root=PARTUUID= or a by-id link name the raw device itself,
# which holds the same file system while its cache may hold dirty data.
# Boot with root=/dev/bcache/NAME.

bcache_root_check() {
    local dev real props p uuid name line
    case "${root:-}" in
        block:/dev/*) dev=${root#block:} ;;
        /dev/*) dev=$root ;;
        *) return 0 ;;
    esac
    [ -x /usr/sbin/bcache ] && [ -r /etc/bcachetab ] && [ -b "$dev" ] || return 0
    real=$(readlink -f "$dev")
    case "${real##*/}" in
        bcache*) return 0 ;;
    esac
    # the properties 61-bcachetab.rules matches on: the probed content, the
    # node, the links
    props=$(
        unset CACHED_UUID ID_FS_UUID ID_FS_LABEL ID_PART_ENTRY_UUID ID_PART_ENTRY_NAME DEVLINKS
        links=
        for l in /dev/disk/*/*; do
            [ -L "$l" ] && [ "$(readlink -f "$l")" = "$real" ] && links="$links $l"
        done
        blkid -o udev -p "$real" 2> /dev/null | while IFS= read -r p; do
            case "$p" in
                ID_FS_UUID=* | ID_FS_LABEL=* | ID_PART_ENTRY_UUID=* | ID_PART_ENTRY_NAME=*) echo "$p" ;;
            esac
        done > /tmp/bcache-root-props
        while IFS= read -r p; do export "$p"; done < /tmp/bcache-root-props
        DEVNAME=$real DEVLINKS=${links# } /usr/sbin/bcache tab match 2> /dev/null
    )
    uuid=
    name=
    for p in $props; do
        case "$p" in
            BCACHETAB_UUID=*) uuid=${p#*=} ;;
            BCACHETAB_NAME=*) name=${p#*=} ;;
        esac
    done
    [ -n "$uuid" ] || return 0
    line=$(grep -v '^[[:space:]]*#' /etc/bcachetab | grep -i -m 1 -- "$uuid")
    /usr/sbin/bcache tab list > /dev/console 2>&1
    die "bcache: refusing to mount $real, the raw device of bcachetab line '$line', as the root file system. Boot with root=/dev/bcache/${name:-by-uuid/$uuid}."
}

bcache_root_check
