#!/bin/bash
# rdinit of item 2b's boot (benchmarks/guest_cost.py): in kiwi-overlay's no-systemd initrd, before
# dracut's init, time what kiwi-overlay's processes are made of; KO-MARK lines on ttyS1, then poweroff.
# The interpreter is the initrd's, with the flags of its /usr/bin/kiwi-overlay (-ISBXutf8).
set -u
PATH=/usr/sbin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

mark() {
    read -r uptime _ < /proc/uptime
    echo "[$uptime] KO-MARK $*" > /dev/ttyS1
}

python=(/usr/bin/python3 -ISBXutf8)
# Seconds that "$@" took, from bash's microsecond clock (EPOCHREALTIME without its point).
took() {
    local start=${EPOCHREALTIME/./} elapsed
    "$@" > /dev/null
    elapsed=$((${EPOCHREALTIME/./} - start))
    printf '%d.%06d' $((elapsed / 1000000)) $((elapsed % 1000000))
}

# The first interpreter of the boot translates the interpreter's code (TCG) for the ones after it.
mark "interpreter-first=$(took "${python[@]}" -c pass)"
for _ in 1 2 3; do
    mark "interpreter=$(took "${python[@]}" -c pass)"
done
for _ in 1 2 3; do
    "${python[@]}" /kiwi-overlay-probe.py > /dev/ttyS1
done
mkdir -p /probe-mount
for _ in 1 2 3; do
    mark "mount8=$(took mount -t tmpfs -o size=1m,mode=0755 tmpfs /probe-mount)"
    umount /probe-mount
done
mark "probe-done"
echo o > /proc/sysrq-trigger
sleep 60
