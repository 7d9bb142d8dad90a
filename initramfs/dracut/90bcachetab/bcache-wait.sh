#!/bin/sh
# dracut initqueue/settled hook (90bcachetab): sourced at each pass of the
# initqueue. Without systemd in the initramfs, runs bcachetab's timeout=
# devices whose cache set has not come once their timeout has passed
# (under systemd the udev rule starts bcachetab-wait@.service instead).
# Returns at once for devices that are up, missing, or waiting for their set
# with no timeout (writeback); otherwise within the longest timeout. From the
# initramfs's copy of the state file a timeout= device is registered stale
# and is up at once (the copy may predate a stale mark): this is for one that
# waits all the same.
if [ ! -d /run/systemd/system ] && [ -x /usr/sbin/bcache ] && [ -r /etc/bcachetab ]; then
    /usr/sbin/bcache tab wait --all > /dev/null
fi
