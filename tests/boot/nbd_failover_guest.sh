#!/bin/bash
# Runs inside the QEMU guest of test_nbd_guest.py: two nbd-servers with the same image, the one the
# device is attached through killed in the middle of reading the whole device (the other takes over); then
# rd.root.overlay.nbd.lost=fail:SECONDS (I/O fails) and reboot:SECONDS (the guest reboots: last).
set -eu
checkout=$1
export PYTHONDONTWRITEBYTECODE=1
ko() { "$checkout/.venv/bin/python" -m kiwi_overlay "$@"; }
# Steps go to the harness's result channel (ttyS1), never the console printk writes to.
step() { echo "KO-NBD: $*" > /dev/ttyS1; }

ip link set lo up
work=/tmp/nbd
mkdir -p "$work"
head -c 32M /dev/urandom > "$work/rootfs.img"
expected=$(sha256sum < "$work/rootfs.img")

# serve NAME PORT: an nbd-server exporting the image as `rootfs` on 127.0.0.1:PORT, pid in $work/NAME.pid
serve() {
    cat > "$work/$1.conf" <<CONFIG
[generic]
user = root
group = root
listenaddr = 127.0.0.1
port = $2
[rootfs]
exportname = $work/rootfs.img
readonly = true
CONFIG
    nbd-server -C "$work/$1.conf" -p "$work/$1.pid"
    # nbd-server may return before it listens: the attach must find every server up.
    until ss -Hltn "sport = :$2" | grep -q .; do sleep 0.1; done
}
# stop NAME: nbd-server ends the children that serve its clients too
stop() {
    local pid
    pid=$(cat "$work/$1.pid")
    kill "$pid"
    while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
}
supervisor_field() { python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "/run/kiwi-overlay/nbd/$1.json" "$2"; }

# -- failover: the server the device is attached through dies while the device is read -------------
first=nbd://127.0.0.1:10809/rootfs second=nbd://127.0.0.1:10810/rootfs
serve first 10809
serve second 10810
device=$(ko nbd attach "$first,$second" --timeout 60)
# The first that answers is used: in a slow guest the first server's greeting can miss the 0.5 s of
# the first attempt, and then the second serves. Whichever it is, it is the one that dies.
attached=$(supervisor_field nbd0 server)
case $attached in
    "$first") attached_name=first other_name=second other=$second ;;
    "$second") attached_name=second other_name=first other=$first ;;
    *) attached_name=none other_name=none other=none ;;
esac
[ "$device" = /dev/nbd0 ] && [ "$attached_name" != none ] && step "failover attached $device through one of the two"
read_sum=$(
    {
        dd if="$device" bs=1M count=16 iflag=direct status=none
        stop "$attached_name"
        step "the server attached through stopped after 16 MiB"
        dd if="$device" bs=1M skip=16 iflag=direct status=none
    } | sha256sum
)
[ "$read_sum" = "$expected" ] && step "failover read complete, checksum ok"
dmesg | grep "kiwi-overlay-nbd" || true
dmesg | grep -qF "$other took over from $attached" && step "failover the other server took over"
[ "$(supervisor_field nbd0 server)" = "$other" ] && [ "$(supervisor_field nbd0 connection)" = connected ] \
    && step "failover record says connected to the other"
ko nbd detach "$device"
stop "$other_name"

# -- lost=fail:4: I/O fails after 4 s without a server ----------------------------------------
serve third 10811
device=$(ko nbd attach nbd://127.0.0.1:10811/rootfs --device /dev/nbd1 --lost fail:4 --timeout 60)
[ "$device" = /dev/nbd1 ] && step "fail attached $device"
stop third
if dd if="$device" bs=4096 count=1 skip=100 iflag=direct of=/dev/null status=none 2> "$work/dd.err"; then
    step "fail read unexpectedly worked"
else
    grep -q "Input/output error" "$work/dd.err" && step "fail read gave an I/O error"
fi
for _ in $(seq 1 100); do
    dmesg | grep -q "no NBD server for 4 s: I/O on the root device fails from now on" && break
    sleep 0.1
done
dmesg | grep -q "no NBD server for 4 s: I/O on the root device fails from now on (rd.root.overlay.nbd.lost=fail:4)" && step "fail console line"
dd if="$device" bs=4096 count=1 skip=200 iflag=direct of=/dev/null status=none 2>/dev/null || step "fail next read fails at once"
[ "$(supervisor_field nbd1 connection)" = failing ] && step "fail record says failing"
ko nbd detach "$device" || true

# -- lost=reboot:3: the last step; QEMU runs with -no-reboot, so the guest ends here -------------
serve fourth 10812
device=$(ko nbd attach nbd://127.0.0.1:10812/rootfs --device /dev/nbd2 --lost reboot:3 --timeout 60)
[ "$device" = /dev/nbd2 ] && step "reboot attached $device"
stop fourth
sleep 60
step "reboot did not happen"
