#!/bin/bash
# dracut module: bcache-tools (Rust). Installed as
# /usr/lib/dracut/modules.d/90bcache/module-setup.sh.

check() {
    # In host-only mode, only when a file system the host needs is on bcache.
    if [[ $hostonly ]] || [[ $mount_needs ]]; then
        for fs in "${host_fs_types[@]}"; do
            [[ $fs == bcache ]] && return 0
        done
        return 255
    fi
    return 0
}

depends() {
    return 0
}

installkernel() {
    instmods bcache
}

install() {
    inst_multiple /usr/sbin/bcache
    inst_rules 69-bcache.rules
}
