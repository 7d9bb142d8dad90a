#!/bin/sh
# Build the bcache module with the register_raw patch, out of tree, for a
# Debian Linux 6.12 kernel.
#
#   kernel/build.sh [KERNEL_RELEASE] [OUTPUT_DIR]
#   kernel/build.sh --headers [KERNEL_RELEASE]
#
# KERNEL_RELEASE defaults to `uname -r`; OUTPUT_DIR to target/kernel/RELEASE.
# The bcache sources come from Debian's linux-source-6.12 package of the same
# version as the kernel, the build tree from its linux-headers packages: both
# are used as installed (/usr/src) when they are, otherwise downloaded with
# `apt-get download` and unpacked into $BCACHE_KBUILD_CACHE (default
# ~/.cache/bcache-tools-kbuild), never installed. No kernel source is kept in
# this repository: only register_raw.patch, the project's own code.
#
# --headers only prints the build tree's directory (downloading it if need
# be): what `dkms build --kernelsourcedir` wants when linux-headers-RELEASE
# is not installed. BCACHE_KBUILD_HEADERS=DIR builds against DIR instead of
# looking for one; dkms.conf passes DKMS's kernel source directory that way,
# so the module is built against the tree DKMS checked.
#
# Needs: gcc, make, patch, binutils, xz-utils, and (to download) apt with
# Debian's bookworm-security suite.
set -eu

MODE=build
if [ "${1:-}" = --headers ]; then
    MODE=headers
    shift
fi
KVER=${1:-$(uname -r)}
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=${2:-$HERE/../target/kernel/$KVER}
CACHE=${BCACHE_KBUILD_CACHE:-${HOME:-/root}/.cache/bcache-tools-kbuild}
PATCH=$HERE/register_raw.patch

die() { echo "kernel/build.sh: $*" >&2; exit 1; }

case $KVER in
6.12.*) ;;
*) die "$KVER: register_raw.patch applies to Linux 6.12 (Debian's 6.12.y kernels) only" ;;
esac

# Debian names: linux-headers-6.12.117+deb12-amd64 is version 6.12.117-1~deb12u1,
# and so is the linux-source-6.12 that matches it.
pkg_version() {
    apt-cache show "$1" 2>/dev/null | sed -n 's/^Version: //p' | head -n 1
}

root=$CACHE/$KVER
headers=${BCACHE_KBUILD_HEADERS:-/usr/src/linux-headers-$KVER}
if [ -n "${BCACHE_KBUILD_HEADERS:-}" ]; then
    # A tree of another release would build a module its kernel refuses
    # (vermagic), and only at load time would anyone notice.
    given=$(cat "$headers/include/config/kernel.release" 2>/dev/null) ||
        die "$headers: not a kernel build tree (no include/config/kernel.release)"
    [ "$given" = "$KVER" ] || die "$headers is the build tree of $given, not of $KVER"
elif [ ! -f "$headers/Makefile" ]; then
    headers=$root/usr/src/linux-headers-$KVER
    if [ ! -f "$root/.headers-done" ]; then
        version=$(pkg_version "linux-headers-$KVER")
        [ -n "$version" ] || die "no package linux-headers-$KVER (run apt-get update; is it a Debian 6.12 kernel?)"
        common=$(apt-cache show "linux-headers-$KVER=$version" | sed -n 's/^Depends: .*\(linux-headers-[^ ,]*-common\).*/\1/p')
        kbuild=$(apt-cache show "linux-headers-$KVER=$version" | sed -n 's/^Depends: .*\(linux-kbuild-[^ ,]*\).*/\1/p')
        mkdir -p "$root/debs"
        (cd "$root/debs" && apt-get download -q "linux-headers-$KVER=$version" "$common=$version" "$kbuild=$version" >/dev/null)
        for deb in "$root"/debs/*.deb; do dpkg-deb -x "$deb" "$root"; done
        # The headers' Makefile includes the common tree by absolute path.
        sed -i "s|include /usr/src/|include $root/usr/src/|" "$headers/Makefile"
        rm -rf "$root/debs"
        touch "$root/.headers-done"
    fi
fi

if [ "$MODE" = headers ]; then
    echo "$headers"
    exit 0
fi

# The source of the running kernel's version, unpacked once.
src=$root/linux-source
if [ ! -d "$src/drivers/md/bcache" ]; then
    version=$(pkg_version "linux-headers-$KVER")
    [ -n "$version" ] || die "cannot tell the Debian version of $KVER"
    tarball=/usr/src/linux-source-6.12.tar.xz
    installed=$(dpkg-query -W -f '${Version}' linux-source-6.12 2>/dev/null || true)
    mkdir -p "$root"
    if [ "$installed" != "$version" ]; then
        (cd "$root" && apt-get download -q "linux-source-6.12=$version" >/dev/null) ||
            die "linux-source-6.12 $version is not in the archive any more; upgrade the kernel"
        dpkg-deb --fsys-tarfile "$root"/linux-source-6.12_*.deb | tar -x -C "$root" ./usr/src/linux-source-6.12.tar.xz
        rm -f "$root"/linux-source-6.12_*.deb
        tarball=$root/usr/src/linux-source-6.12.tar.xz
    fi
    rm -rf "$src.tmp"
    mkdir -p "$src.tmp"
    tar -xJf "$tarball" -C "$src.tmp" --strip-components=1 \
        linux-source-6.12/drivers/md/bcache linux-source-6.12/Documentation/admin-guide/bcache.rst
    rm -f "$root/usr/src/linux-source-6.12.tar.xz"
    mv "$src.tmp" "$src"
fi

# A build directory of its own: DKMS (at a kernel upgrade, say) and a build
# by hand may run at once for the same release.
mkdir -p "$root"
build=$(mktemp -d "$root/build.XXXXXX")
trap 'rm -rf "$build"' EXIT
mkdir -p "$build/drivers/md" "$build/Documentation/admin-guide"
cp -r "$src/drivers/md/bcache" "$build/drivers/md/"
cp "$src/Documentation/admin-guide/bcache.rst" "$build/Documentation/admin-guide/"
patch -s -p1 -d "$build" < "$PATCH" || die "register_raw.patch does not apply to $KVER's bcache"

# BTF for modules needs pahole; the module works without it.
make -s -C "$headers" M="$build/drivers/md/bcache" CONFIG_BCACHE=m \
    CONFIG_DEBUG_INFO_BTF_MODULES= modules -j"$(nproc)"
mkdir -p "$OUT"
strip --strip-debug -o "$OUT/bcache.ko" "$build/drivers/md/bcache/bcache.ko"
echo "$OUT/bcache.ko"
