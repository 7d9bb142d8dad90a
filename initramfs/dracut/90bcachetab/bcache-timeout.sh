#!/bin/sh
# dracut initqueue/timeout hook (90bcachetab): the root has not come in time;
# say which bcachetab devices wait, and for what (a writeback device waits
# for its cache set: it may hold dirty data).
if [ -x /usr/sbin/bcache ] && [ -r /etc/bcachetab ]; then
    echo "bcache: bcachetab's devices:" > /dev/console
    /usr/sbin/bcache tab list > /dev/console 2>&1
fi
