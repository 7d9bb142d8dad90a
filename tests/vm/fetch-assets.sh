#!/bin/sh
# Fetch the guest kernel for the QEMU test harness (tests/common/vm.rs).
#
# Downloads the newest Debian bookworm `linux-image-6.12.*+deb12-amd64-unsigned`
# package with `apt-get download` (nothing is installed on the host), extracts it
# with `dpkg-deb -x`, and keeps in the cache directory:
#
#   $BCACHE_VM_CACHE/vmlinuz            the kernel image (bzImage)
#   $BCACHE_VM_CACHE/vmlinux            the same kernel uncompressed (ELF with a PVH entry:
#                                       QEMU starts it directly, ~0.5 s faster under TCG);
#                                       made only when `zstd` is installed
#   $BCACHE_VM_CACHE/modules/*.ko       decompressed modules the guest needs
#   $BCACHE_VM_CACHE/modules/load-order module file names, one a line, in insmod order
#   $BCACHE_VM_CACHE/lib-modules/RELEASE the package's whole module tree (modules as shipped,
#                                       xz-compressed) with depmod's indexes, for the Debian
#                                       userland guests (`Vm::debian`): modprobe and udev's kmod
#   $BCACHE_VM_CACHE/kernel-package     "PACKAGE VERSION" of the .deb used
#   $BCACHE_VM_CACHE/kernel-release     uname -r of the guest, e.g. 6.12.115+deb12-amd64
#                                       (written last: its presence marks a complete cache;
#                                       linux-headers-$(cat kernel-release) matches it)
#
# BCACHE_VM_CACHE defaults to $HOME/.cache/bcache-tools-vm.
# A second run with a complete cache does nothing and prints the kernel release.
# `--refresh` throws the cache away and fetches the newest kernel again.
#
# Host packages needed (Debian bookworm, run as root after `apt-get update`):
#   apt-get install -y --no-install-recommends qemu-system-x86 busybox-static cpio xz-utils zstd
# (apt and dpkg-deb are part of every Debian system; xz-utils decompresses the modules;
#  zstd, optional, unpacks vmlinux from Debian's zstd-compressed bzImage; cpio is not
#  used by the harness, which writes its cpio archives itself, but handy for debugging.
#  The tests themselves also use bcache-tools, e2fsprogs and xfsprogs on the host.)
# Network access to the Debian archive, including bookworm-security, is needed once.
set -eu

CACHE=${BCACHE_VM_CACHE:-${HOME:-/root}/.cache/bcache-tools-vm}

# Modules wanted in the guest. Built-in ones are skipped; dependencies found in the
# modules' own `depends=` field are added. Soft dependencies (`softdep=pre:`, e.g.
# jbd2, ext4 and libcrc32c want a crc32c implementation) are not followed: their
# providers must be listed here, before their users. The harness (tests/common/vm.rs)
# loads a subset at boot, in an order it computes from depends= and softdep=.
# 9p, 9pnet_virtio and overlay: the first stage of a Debian userland guest (host / over
# virtio-9p under an overlay whose upper layer is on an ext4 system disk).
WANTED="virtio_blk virtio_console dm-mod loop crc16 crc32c_generic mbcache jbd2 ext4 libcrc32c xfs null_blk bcache 9p 9pnet_virtio overlay"

say() { printf 'fetch-assets: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

refresh=0
for arg in "$@"; do
    case $arg in
    --refresh) refresh=1 ;;
    -h|--help)
        sed -n '2,/^set -eu/p' "$0" | sed '$d; s/^# \{0,1\}//'
        exit 0 ;;
    *) die "unknown argument: $arg" ;;
    esac
done

complete_cache() {
    [ -s "$CACHE/kernel-release" ] && [ -s "$CACHE/vmlinuz" ] && [ -s "$CACHE/modules/load-order" ] || return 1
    while read -r ko; do
        [ -s "$CACHE/modules/$ko" ] || return 1
    done < "$CACHE/modules/load-order"
    [ -s "$CACHE/lib-modules/$(cat "$CACHE/kernel-release")/modules.dep.bin" ] || return 1
    # A cache made for another module list is refetched.
    [ "$(cat "$CACHE/wanted" 2>/dev/null)" = "$WANTED" ]
}

if [ "$refresh" = 0 ] && complete_cache; then
    echo "cached kernel: $(cat "$CACHE/kernel-release") in $CACHE"
    exit 0
fi

for tool in apt-get apt-cache dpkg-deb xz depmod; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool not found (install apt, dpkg, xz-utils and kmod)"
done

mkdir -p "$CACHE"
WORK=$(mktemp -d "$CACHE/.fetch.XXXXXX")
trap 'rm -rf "$WORK"' EXIT INT TERM

# Candidates, newest first. Old point releases vanish from the archive while the
# package lists may still name them, so fall back to older ones if a download fails.
candidates=$(apt-cache search --names-only '^linux-image-6\.12\.[0-9]+\+deb12-amd64-unsigned$' \
    | cut -d' ' -f1 | sort -t. -k3,3nr)
[ -n "$candidates" ] || die "no linux-image-6.12.*+deb12-amd64-unsigned in the apt lists; run apt-get update (bookworm-security must be in sources)"

deb=
for pkg in $candidates; do
    version=$(apt-cache policy "$pkg" | awk '/Candidate:/ { print $2 }')
    [ -n "$version" ] && [ "$version" != "(none)" ] || continue
    say "downloading $pkg $version"
    # as root, apt would try (and fail, with a warning) to drop to _apt in this dir
    sandbox=
    [ "$(id -u)" = 0 ] && sandbox="-o APT::Sandbox::User=root"
    if (cd "$WORK" && apt-get download -q $sandbox "$pkg=$version" >&2); then
        deb=$(ls "$WORK"/*.deb 2>/dev/null | head -n1)
        [ -n "$deb" ] && break
    fi
    say "download of $pkg failed, trying an older one"
    rm -f "$WORK"/*.deb
done
[ -n "$deb" ] || die "could not download any of: $candidates"

say "extracting $(basename "$deb")"
dpkg-deb -x "$deb" "$WORK/root"

moddir=$(ls -d "$WORK"/root/lib/modules/* 2>/dev/null | head -n1)
[ -n "$moddir" ] || moddir=$(ls -d "$WORK"/root/usr/lib/modules/* | head -n1)
release=$(basename "$moddir")
vmlinuz="$WORK/root/boot/vmlinuz-$release"
[ -f "$vmlinuz" ] || die "no /boot/vmlinuz-$release in $deb"

# path of module NAME inside the package, '-' and '_' being the same
find_module() {
    n1=$(echo "$1" | tr - _)
    n2=$(echo "$1" | tr _ -)
    find "$moddir/kernel" \( -name "$n1.ko*" -o -name "$n2.ko*" \) | head -n1
}

builtin() {
    [ -f "$moddir/modules.builtin" ] || return 1
    n1=$(echo "$1" | tr - _)
    n2=$(echo "$1" | tr _ -)
    grep -qE "/($n1|$n2)\.ko\$" "$moddir/modules.builtin"
}

mkdir -p "$WORK/modules"
: > "$WORK/load-order"
: > "$WORK/visiting"

# Depth-first: a module's dependencies are written to load-order before it.
add_module() {
    name=$(echo "$1" | tr - _)
    grep -qx "$name" "$WORK/visiting" && return 0
    echo "$name" >> "$WORK/visiting"
    src=$(find_module "$name")
    if [ -z "$src" ]; then
        if builtin "$name"; then
            say "$name is built in"
            return 0
        fi
        die "module $name is neither in the package nor built in"
    fi
    ko=$(basename "$src")
    ko=${ko%.xz}; ko=${ko%.zst}; ko=${ko%.gz}
    case $src in
    *.ko.xz) xz -dc "$src" > "$WORK/modules/$ko" ;;
    *.ko.zst) zstd -dcq "$src" > "$WORK/modules/$ko" ;;
    *.ko.gz) gzip -dc "$src" > "$WORK/modules/$ko" ;;
    *) cp "$src" "$WORK/modules/$ko" ;;
    esac
    deps=$(tr '\0' '\n' < "$WORK/modules/$ko" | sed -n 's/^depends=//p' | head -n1 | tr , ' ')
    for dep in $deps; do
        (add_module "$dep")   # subshell: keeps this level's variables
    done
    echo "$ko" >> "$WORK/load-order"
}

for m in $WANTED; do
    (add_module "$m")
done

# Uncompressed kernel for a PVH boot: find the zstd frame in the bzImage.
: > "$WORK/vmlinux"
if command -v zstd >/dev/null 2>&1; then
    for off in $(LC_ALL=C grep -obUaP '\x28\xb5\x2f\xfd' "$vmlinuz" | cut -d: -f1); do
        if tail -c +"$((off + 1))" "$vmlinuz" | zstd -dcq 2>/dev/null > "$WORK/vmlinux"; then :; fi
        if [ "$(head -c 4 "$WORK/vmlinux" | od -An -tx1 | tr -d ' ')" = 7f454c46 ]; then
            break
        fi
        : > "$WORK/vmlinux"
    done
    [ -s "$WORK/vmlinux" ] || say "could not unpack vmlinux (not zstd?); QEMU will boot vmlinuz"
else
    say "zstd not installed: no vmlinux, QEMU will boot vmlinuz (slower)"
fi

# The whole module tree, with the indexes the package's postinst would make.
say "running depmod on the module tree"
mkdir -p "$WORK/tree/lib/modules"
mv "$moddir" "$WORK/tree/lib/modules/$release"
depmod -b "$WORK/tree" "$release" || die "depmod failed"

rm -f "$CACHE/kernel-release" "$CACHE/vmlinux"
rm -rf "$CACHE/modules" "$CACHE/lib-modules"
mv "$WORK/tree/lib/modules" "$CACHE/lib-modules"
mv "$WORK/modules" "$CACHE/modules"
mv "$WORK/load-order" "$CACHE/modules/load-order"
cp "$vmlinuz" "$CACHE/vmlinuz"
if [ -s "$WORK/vmlinux" ]; then
    mv "$WORK/vmlinux" "$CACHE/vmlinux"
fi
[ -f "$WORK/root/boot/config-$release" ] && cp "$WORK/root/boot/config-$release" "$CACHE/config"
echo "$pkg $version" > "$CACHE/kernel-package"
echo "$WANTED" > "$CACHE/wanted"
echo "$release" > "$CACHE/kernel-release"

say "modules, in load order: $(tr '\n' ' ' < "$CACHE/modules/load-order")"
echo "fetched kernel: $release in $CACHE"
