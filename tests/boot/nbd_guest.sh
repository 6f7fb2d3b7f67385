#!/bin/bash
# Runs inside the QEMU guest of test_nbd_guest.py (the host's root, read-only, over 9p):
# attach with kiwi-overlay, read, hide the Python files (as switch_root would), restart the
# server, read again (reconnect), detach; then the same over TLS.
set -eu
checkout=$1
export PYTHONDONTWRITEBYTECODE=1
ko() { "$checkout/.venv/bin/python" -m kiwi_overlay "$@"; }
# Steps go to the harness's result channel (ttyS1), never the console printk writes to.
step() { echo "KO-NBD: $*" > /dev/ttyS1; }
supervisor_pid() { python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["pid"])' /run/kiwi-overlay/nbd/nbd0.json; }

ip link set lo up
work=/tmp/nbd
mkdir -p "$work"
printf 'kiwi-overlay guest image\n' > "$work/rootfs.img"
truncate -s 16M "$work/rootfs.img"
cat > "$work/config" <<CONFIG
[generic]
user = root
group = root
listenaddr = 127.0.0.1
[rootfs]
exportname = $work/rootfs.img
readonly = true
CONFIG
nbd-server -C "$work/config" -p "$work/pid"

started=$(date +%s%N)
device=$(ko nbd attach nbd://127.0.0.1/rootfs --connections 2 --timeout 60 --debug)
[ "$device" = /dev/nbd0 ] && step "attached $device"
step "attach took $(( ($(date +%s%N) - started) / 1000000 )) ms (TCG; not a benchmark)"
pid=$(supervisor_pid)
step "argv0 $(tr '\0' '\n' < "/proc/$pid/cmdline" | head -n 1)"
step "read-only $(blockdev --getro "$device")"
step "backend $(cat /sys/block/nbd0/backend 2>/dev/null || echo none)"
dd if="$device" bs=4096 count=1 iflag=direct status=none | grep -q 'kiwi-overlay guest image' && step "first sector ok"

# What switch_root does to the initrd: the files the supervisor was started from disappear.
hidden=(/usr/lib/python3.11 "$checkout")
for dir in "${hidden[@]}"; do mv "$dir" "$dir.hidden"; done
[ ! -e "$checkout" ] && step "python files gone"

# A server restart: the kernel reports the dead links, the supervisor negotiates again.
server=$(cat "$work/pid")
kill "$server"
while kill -0 "$server" 2>/dev/null; do sleep 0.1; done
sleep 2
nbd-server -C "$work/config" -p "$work/pid"
dd if="$device" bs=4096 count=1 skip=1 iflag=direct status=none > /dev/null && step "read after restart ok"
for _ in $(seq 1 300); do
    dmesg | grep -q "kiwi-overlay-nbd.*reconnected" && break
    sleep 0.1
done
dmesg | grep "kiwi-overlay-nbd" || true
dmesg | grep -q "kiwi-overlay-nbd.*reconnected" && step "reconnected"
dd if="$device" bs=4096 count=1 iflag=direct status=none | grep -q 'kiwi-overlay guest image' && step "first sector ok after reconnect"
for dir in "${hidden[@]}"; do mv "$dir.hidden" "$dir"; done

ko nbd detach "$device"
[ ! -e /sys/block/nbd0/pid ] && ! kill -0 "$pid" 2>/dev/null && [ ! -e /run/kiwi-overlay/nbd/nbd0.json ] && step "detached"

# The ioctl interface (kernels without the netlink family), on a device named by --device.
device=$(ko nbd attach nbd://127.0.0.1/rootfs --device /dev/nbd2 --ioctl --timeout 60)
[ "$device" = /dev/nbd2 ] && [ -e /sys/block/nbd2/pid ] && step "ioctl attached $device"
step "ioctl read-only $(blockdev --getro "$device")"
dd if="$device" bs=4096 count=1 iflag=direct status=none | grep -q 'kiwi-overlay guest image' && step "ioctl first sector ok"
ko nbd detach "$device"
[ ! -e /sys/block/nbd2/pid ] && [ ! -e /run/kiwi-overlay/nbd/nbd2.json ] && step "ioctl detached"

# The ioctl detach order: the kernel's NBD_CMD_DISC reaches the server before the supervisor ends.
python3 "$checkout/tests/boot/nbd_recorder.py" 10811 "$work/rootfs.img" "$work/recorded" &
recorder=$!
for _ in $(seq 1 100); do [ -e "$work/recorded.ready" ] && break; sleep 0.1; done
device=$(ko nbd attach nbd://127.0.0.1:10811/rootfs --device /dev/nbd4 --ioctl --timeout 60)
ko nbd detach "$device"
grep -qx disc "$work/recorded" && step "ioctl detach sent NBD_CMD_DISC"
kill "$recorder"

# nbds://: the kernel gets a socket pair, the supervisor carries it over TLS to qemu-nbd.
pki=$2
qemu-nbd --persistent --shared=0 --port 10810 --bind 127.0.0.1 -x rootfs -f raw --read-only \
    --object "tls-creds-x509,id=tls0,dir=$pki,endpoint=server,verify-peer=off" --tls-creds tls0 "$work/rootfs.img" &
qemu=$!
device=$(ko nbd attach nbds://127.0.0.1:10810/rootfs --tls-ca "$pki/ca-cert.pem" --timeout 60 --device /dev/nbd3)
[ "$device" = /dev/nbd3 ] && step "tls attached $device"
dd if="$device" bs=4096 count=1 iflag=direct status=none | grep -q 'kiwi-overlay guest image' && step "tls first sector ok"
ko nbd detach "$device"
[ ! -e /sys/block/nbd3/pid ] && step "tls detached"
kill "$qemu"
