#!/bin/sh
# An emulated Raspberry Pi (Debian bookworm arm64, Python 3.11, like Raspberry Pi OS) that is a real SSH device.
#
#   devices/emulate/arm64-pi.sh build ROOT                 # debootstrap the rootfs (about 15 min, once)
#   devices/emulate/arm64-pi.sh start ROOT PORT PUBKEY     # its own arm64 sshd on 127.0.0.1:PORT, user `pi`
#   devices/emulate/arm64-pi.sh stop ROOT
#   devices/emulate/arm64-pi.sh check                      # can this machine run arm64 binaries? (binfmt_misc)
#
# Every arm64 binary (python3, sshd, ...) runs under qemu-user-static through binfmt_misc; nothing is a
# stand-in. The rootfs shares the host's network namespace (so 127.0.0.1:PORT reaches its sshd) but has no
# DNS of its own (empty resolv.conf), so it cannot fetch packages: `edgecls flash --setup` pushes wheels.
# Needs root, debootstrap and qemu-user-static (Debian packages). Timings taken in it are emulated timings,
# several times slower than a real Pi: never quote them as Raspberry Pi figures.
set -eu

MIRROR=${EDGECLS_DEBIAN_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
PACKAGES=python3,python3-venv,python3-pip,ca-certificates,openssh-server,tar

die() { echo "arm64-pi: $*" >&2; exit 1; }

# ROOT as given must name a rootfs folder: an unset variable ("") or / would make stop unmount the machine's own
# /dev and /proc and kill every process. stop and start also want the mark a finished build leaves.
guard_root() {
    [ -n "$1" ] || die "ROOT is empty: name the rootfs folder (e.g. ~/.cache/edgecls/arm64-pi/bookworm)"
    [ "$(realpath -m -- "$1")" != / ] || die "ROOT is the file system root: name the rootfs folder"
    [ "$2" != built ] || [ -e "$1/.edgecls-built" ] || die "$1 is not a rootfs this script built (no .edgecls-built): nothing done"
}

check() {
    [ "$(id -u)" = 0 ] || die "must run as root (debootstrap, chroot and binfmt_misc need it)"
    command -v qemu-aarch64-static >/dev/null || die "qemu-aarch64-static is missing: apt-get install qemu-user-static"
    if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
        mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc 2>/dev/null ||
            die "cannot mount binfmt_misc on /proc/sys/fs/binfmt_misc (a container without that privilege?): arm64 binaries cannot run here"
    fi
    if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
        conf=/usr/lib/binfmt.d/qemu-aarch64.conf
        [ -r "$conf" ] || die "$conf is missing: apt-get install qemu-user-static"
        # F (fix binary): the kernel opens the interpreter now, so it works inside the chroot without a copy.
        cat "$conf" > /proc/sys/fs/binfmt_misc/register 2>/dev/null ||
            die "cannot register the qemu-aarch64 binfmt handler: arm64 binaries cannot run here"
    fi
    grep -q '^enabled' /proc/sys/fs/binfmt_misc/qemu-aarch64 || die "the qemu-aarch64 binfmt handler is disabled"
}

build() {
    root=$1
    guard_root "$root" any
    check
    command -v debootstrap >/dev/null || die "debootstrap is missing: apt-get install debootstrap"
    [ -e "$root/.edgecls-built" ] && { echo "arm64-pi: $root is already built"; return 0; }
    [ -e "$root" ] && [ -n "$(ls -A "$root" 2>/dev/null)" ] && die "$root exists and is not a finished rootfs: remove it first"
    partial="$root.partial"
    rm -rf "$partial"
    mkdir -p "$partial"
    debootstrap --arch=arm64 --foreign --variant=minbase --include="$PACKAGES" "$SUITE" "$partial" "$MIRROR"
    cp /usr/bin/qemu-aarch64-static "$partial/usr/bin/"
    chroot "$partial" /debootstrap/debootstrap --second-stage
    for dir in proc sys; do mountpoint -q "$partial/$dir" && umount -l "$partial/$dir" || true; done
    chroot "$partial" /usr/bin/python3 -c 'import platform; assert platform.machine() == "aarch64", platform.machine()'
    chroot "$partial" useradd --create-home --shell /bin/bash pi
    : > "$partial/etc/resolv.conf"
    rm -f "$partial"/etc/ssh/ssh_host_*  # generated per start: no two emulated Pis share host keys
    rm -rf "$partial/var/cache/apt/archives"/*.deb
    touch "$partial/.edgecls-built"
    mv "$partial" "$root"
    echo "arm64-pi: built $root"
}

start() {
    root=$1 port=$2 pubkey=$3
    guard_root "$root" any
    check
    [ -e "$root/.edgecls-built" ] || die "$root is not a built rootfs: run '$0 build $root' first"
    [ -r "$pubkey" ] || die "public key $pubkey is not readable"
    # /proc and /dev only: with the host's /sys, the cpuinfo library inside onnxruntime and LiteRT reads an
    # x86 CPU topology as an arm64 one and crashes (SIGSEGV at import under qemu 7.2); without it they warn
    # "cpuinfo_initialize failed" and run.
    for dir in proc dev; do
        mountpoint -q "$root/$dir" || mount --bind "/$dir" "$root/$dir"
    done
    mkdir -p "$root/run/sshd" "$root/home/pi/.ssh"
    cp "$pubkey" "$root/home/pi/.ssh/authorized_keys"
    chroot "$root" sh -c 'chown -R pi:pi /home/pi/.ssh && chmod 700 /home/pi/.ssh && chmod 600 /home/pi/.ssh/authorized_keys'
    chroot "$root" ssh-keygen -A >/dev/null
    # The Pi's installs go to /opt/edgecls like on a real one, owned by pi (flash runs as the SSH user).
    mkdir -p "$root/opt/edgecls"
    chroot "$root" chown pi:pi /opt/edgecls
    chroot "$root" /usr/sbin/sshd -p "$port" -o ListenAddress=127.0.0.1 -o PasswordAuthentication=no \
        -o PidFile=/run/sshd-edgecls.pid -o UseDNS=no
    for _ in $(seq 1 120); do
        [ -s "$root/run/sshd-edgecls.pid" ] && { echo "arm64-pi: sshd on 127.0.0.1:$port"; return 0; }
        sleep 0.5
    done
    die "the emulated sshd did not start on port $port"
}

stop() {
    root=$1
    guard_root "$root" built
    real=$(realpath -- "$root")
    # After a host reboot or a kill -9 the pid file names a pid that may be anyone's: only a process whose
    # root is this rootfs is ours to end.
    if [ -s "$root/run/sshd-edgecls.pid" ]; then
        pid=$(head -c 32 "$root/run/sshd-edgecls.pid" | tr -cd 0-9)
        [ -n "$pid" ] && [ "$(readlink "/proc/$pid/root" 2>/dev/null)" = "$real" ] && kill "$pid" 2>/dev/null || true
        rm -f "$root/run/sshd-edgecls.pid"
    fi
    # Sessions still running under the rootfs keep the mounts busy: end them first.
    for pid in $(ls /proc | grep -E '^[0-9]+$'); do
        [ "$(readlink "/proc/$pid/root" 2>/dev/null)" = "$real" ] && kill -9 "$pid" 2>/dev/null || true
    done
    for dir in dev sys proc; do
        mountpoint -q "$root/$dir" && umount -l "$root/$dir" || true
    done
    echo "arm64-pi: stopped"
}

case "${1:-}" in
    check) check; echo "arm64-pi: this machine runs arm64 binaries (qemu-aarch64 via binfmt_misc)" ;;
    build) [ $# -eq 2 ] || die "usage: $0 build ROOT"; build "$2" ;;
    start) [ $# -eq 4 ] || die "usage: $0 start ROOT PORT PUBKEY"; start "$2" "$3" "$4" ;;
    stop) [ $# -eq 2 ] || die "usage: $0 stop ROOT"; stop "$2" ;;
    *) die "usage: $0 check | build ROOT | start ROOT PORT PUBKEY | stop ROOT" ;;
esac
