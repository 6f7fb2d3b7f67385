#!/bin/sh
# /sbin/init of the tiny test root (busybox). It reports what the initrd built as
# "[uptime] KO-MARK name[=value]" lines on the second serial port, the harness's result channel
# (printk never writes there), runs the actions named by ko.test=A,B,... and powers off.
# The marker protocol is documented in tests/boot/qemu.py.
export PATH=/bin:/sbin
set -f # command line words are split below, never globbed

mark() {
    read -r uptime _ < /proc/uptime
    # Opened per line: closing a tty waits until its output is sent, so no marker is lost at poweroff.
    echo "[$uptime] KO-MARK $*" > /dev/ttyS1
    # A copy on the console for people reading the log (the harness does not parse it).
    if [ -w /dev/kmsg ]; then echo "<2>KO-MARK $*" > /dev/kmsg; fi
}

# The initrd moves its /proc, /sys, /dev and /run here; mount what it did not.
[ -e /proc/self ] || mount -t proc proc /proc
[ -e /sys/kernel ] || mount -t sysfs sysfs /sys
[ -e /dev/null ] || mount -t devtmpfs devtmpfs /dev
grep -q ' /run ' /proc/mounts || mount -t tmpfs -o mode=0755 tmpfs /run
mark "init uptime=$(cut -d' ' -f1 /proc/uptime)"
# How long the CPUs had nothing to run until now (benchmarks: a boot without idle time is bound by its work).
mark "cpu-idle=$(cut -d' ' -f2 /proc/uptime)"
read -r cmdline < /proc/cmdline

# The entry for / that is visible: the last one mounted there.
root_line=$(awk '$2 == "/" { line = $0 } END { print line }' /proc/mounts)
# shellcheck disable=SC2086 # split into the fields of the mount line
set -- $root_line
mark "root-source=$1"
mark "root-fstype=$3"
mark "root-options=$4"
mark "mounts-begin"
while read -r line; do mark "mount $line"; done < /proc/mounts
mark "mounts-end"

if echo "written by $(uname -r) at $(cut -d' ' -f1 /proc/uptime)" > /ko-write-test && sync && grep -q written /ko-write-test; then
    mark "write=ok"
else
    mark "write=failed"
fi

has_arg() {
    for arg in $cmdline; do [ "$arg" = "$1" ] && return 0; done
    return 1
}

# The CPU's time in the kernel so far (system, irq, softirq in /proc/stat), in USER_HZ (1/100 s) ticks.
kernel_ticks() {
    awk '/^cpu / { print $4 + $7 + $8 }' /proc/stat
}

# A block device's sysfs directory: /dev/etherd/e0.1 is /sys/class/block/etherd!e0.1.
sysfs_block() {
    name=${1#/dev/}
    echo "/sys/class/block/$(echo "$name" | tr / !)"
}

# The device under the read-only layer: the first block device mounted anywhere, unless ko.dev= names one.
read_device() {
    for arg in $cmdline; do
        case $arg in ko.dev=*) echo "${arg#ko.dev=}"; return ;; esac
    done
    awk '$1 ~ /^\/dev\// { print $1; exit }' /proc/mounts
}

action() {
    case $1 in
        write-*)
            # ko.test=write-16M: fill the write layer; "enospc" when it is smaller than that.
            count=${1#write-}
            count=${count%M}
            if out=$(dd if=/dev/zero of=/ko-fill bs=1M count="$count" conv=fsync 2>&1); then
                mark "$1=ok"
            else
                case $out in *"No space left"*) mark "$1=enospc" ;; *) mark "$1=failed $(echo "$out" | head -n 1)" ;; esac
            fi
            rm -f /ko-fill
            ;;
        read-all)
            device=$(read_device)
            sync
            echo 3 > /proc/sys/vm/drop_caches # read from the transport, not the page cache
            start=$(cut -d' ' -f1 /proc/uptime)
            kernel_start=$(kernel_ticks)
            if has_arg ko.read.per-cpu; then
                # One reader per CPU, pinned, each its share of the device: requests from every CPU at once.
                readers=$(nproc)
                share=$(($(cat "$(sysfs_block "$device")/size") / 2048 / readers)) # MiB
                pids=""
                for cpu in $(seq 0 $((readers - 1))); do
                    taskset -c "$cpu" dd if="$device" of=/dev/null bs=1M skip=$((cpu * share)) count="$share" 2> /dev/null &
                    pids="$pids $!"
                done
                out="readers=$readers"
                for pid in $pids; do wait "$pid" || out="a reader failed"; done
                bytes=$((share * readers * 1048576))
            elif out=$(dd if="$device" of=/dev/null bs=1M 2>&1); then
                out="readers=1 $(echo "$out" | tail -n 1)"
                bytes=$(($(cat "$(sysfs_block "$device")/size") * 512))
            else
                out="failed $(echo "$out" | head -n 1)"
            fi
            case $out in
                readers=*)
                    # busybox dd prints no rate: bytes and seconds for the throughput benchmark
                    kernel=$(($(kernel_ticks) - kernel_start))
                    mark "read-all=ok device=$device $out bytes=$bytes seconds=$(awk -v start="$start" '{ print $1 - start }' /proc/uptime) kernel-cpu=$((kernel / 100)).$((kernel / 10 % 10))$((kernel % 10))"
                    ;;
                *) mark "read-all=failed device=$device $out" ;;
            esac
            ;;
        checksum)
            # The root's busybox read back through every layer (the page cache dropped first).
            sync
            echo 3 > /proc/sys/vm/drop_caches
            if sum=$(sha256sum /bin/busybox 2>&1); then mark "checksum=${sum%% *}"; else mark "checksum=failed $sum"; fi
            ;;
        marker-file)
            # Persistence: the first boot creates /ko-persistent, later boots find it.
            if [ -e /ko-persistent ]; then
                mark "marker-file=found $(cat /ko-persistent)"
            else
                echo "boot-id=$(cat /proc/sys/kernel/random/boot_id)" > /ko-persistent && sync
                mark "marker-file=created"
            fi
            ;;
        aoe-discover)
            # Needs the aoe driver loaded by the initrd (rd.driver.pre=aoe): every link up, one
            # discover broadcast, then the first target that appears within 10 s.
            set +f
            for link in /sys/class/net/*; do ip link set "${link##*/}" up; done
            echo > /dev/etherd/discover
            i=0
            while [ $i -lt 100 ] && ! ls /dev/etherd/e*.* > /dev/null 2>&1; do
                sleep 0.1
                i=$((i + 1))
            done
            targets=$(cd /dev/etherd 2> /dev/null && ls -d e*.*)
            set -f
            mark "aoe-discover=${targets:-none}"
            ;;
        shutdown-initramfs)
            # What systemd-shutdown (with dracut-initramfs-restore) does at poweroff: the initrd
            # back at /run/initramfs (here: its contents as squashfs on the virtio disk with serial
            # "koinitrd", made writable by an overlay), pivot into it and let dracut's /shutdown
            # unmount the old root, run the shutdown hooks and power off. Later actions do not run.
            set +f
            disk=
            for block in /sys/block/*; do
                [ "$(cat "$block/serial" 2> /dev/null)" = koinitrd ] && disk=/dev/${block##*/}
            done
            set -f
            if [ -z "$disk" ]; then
                mark "shutdown-initramfs=failed no disk with serial koinitrd"
                return
            fi
            image=/run/ko-initrd/image rw=/run/ko-initrd/rw
            mkdir -p /run/ko-initrd "$image" "$rw" /run/initramfs
            if ! mount -t squashfs -o ro "$disk" "$image" || ! mount -t tmpfs -o mode=0755 tmpfs "$rw" ||
                ! mkdir "$rw/upper" "$rw/work" ||
                ! mount -t overlay -o "lowerdir=$image,upperdir=$rw/upper,workdir=$rw/work" ko-initrd /run/initramfs; then
                mark "shutdown-initramfs=failed to mount $disk (squashfs) at /run/initramfs"
                return
            fi
            # Keep the layers out of the old root, which /shutdown unmounts.
            mkdir -p /run/initramfs/oldroot /run/initramfs/ko-initrd/image /run/initramfs/ko-initrd/rw
            mount --move "$image" /run/initramfs/ko-initrd/image && mount --move "$rw" /run/initramfs/ko-initrd/rw
            sync
            mark "shutdown-initramfs=pivot"
            if ! (cd /run/initramfs && mount --make-rprivate / && pivot_root . oldroot); then
                mark "shutdown-initramfs=failed pivot_root"
                return
            fi
            cd /
            # /shutdown moves the old root's /proc, /sys, /dev, /run away and needs its own.
            mount -t proc proc /proc && mount -t sysfs sysfs /sys && mount -t devtmpfs devtmpfs /dev
            exec /shutdown poweroff
            ;;
        read-files)
            # Every file of the root read back (the page cache dropped first): "ok COUNT" or the first that failed.
            sync
            echo 3 > /proc/sys/vm/drop_caches
            count=0 failed=
            find / -xdev -type f > /run/ko-files # /run: not on the root
            while read -r file; do
                if cat "$file" > /dev/null 2>&1; then count=$((count + 1)); else failed=${failed:-$file}; fi
            done < /run/ko-files
            rm -f /run/ko-files
            if [ -z "$failed" ]; then mark "read-files=ok $count"; else mark "read-files=failed $failed"; fi
            ;;
        fill-overlay)
            # Fill the write layer to 82, 91 and 96 %; after each, wait up to 60 s for one more warning of the watch.
            warned=0
            for percent in 82 91 96; do
                total=$(df -k /run/overlay/overlayfs | awk 'NR == 2 { print $2 }')
                used=$(df -k /run/overlay/overlayfs | awk 'NR == 2 { print $3 }')
                kib=$((total * percent / 100 - used))
                [ "$kib" -gt 0 ] && dd if=/dev/zero of="/ko-fill-$percent" bs=1k count="$kib" 2> /dev/null
                warned=$((warned + 1))
                i=0
                while [ $i -lt 600 ] && [ "$(dmesg | grep -c 'kiwi-overlay-watch.* % full')" -lt $warned ]; do
                    sleep 0.1
                    i=$((i + 1))
                done
                mark "fill-overlay-$percent=$(df -k /run/overlay/overlayfs | awk 'NR == 2 { print $5 }') warnings=$(dmesg | grep -c 'kiwi-overlay-watch.* % full')"
            done
            rm -f /ko-fill-*
            ;;
        sync-then-write)
            # Power-cut test: a file written and synced, then writes that never end (the harness
            # kills QEMU during them). Later actions do not run.
            echo "boot-id=$(cat /proc/sys/kernel/random/boot_id)" > /ko-synced && sync
            mark "synced=$(cat /ko-synced)"
            while :; do dd if=/dev/urandom of=/ko-churn bs=64k count=16 conv=fsync 2> /dev/null; done
            ;;
        synced-check)
            if [ -e /ko-synced ]; then mark "synced-found=$(cat /ko-synced)"; else mark "synced-found=none"; fi
            ;;
        noise)
            # The harness's result channel under printk load: a background writer floods the
            # console with kernel messages while 200 markers with long values are written.
            (i=0; while [ $i -lt 2000 ]; do echo "<2>ko-noise $i: console traffic that must never reach a result line" > /dev/kmsg; i=$((i + 1)); done) &
            noise=$!
            i=0
            while [ $i -lt 200 ]; do
                mark "noise-$i=abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz0123456789-$i"
                i=$((i + 1))
            done
            wait "$noise"
            ;;
        nbd-server)
            # The server the root's NBD device is connected through, from its supervisor's record.
            server=$(sed -n 's/.*"server": "\([^"]*\)".*/\1/p' /run/kiwi-overlay/nbd/nbd0.json 2>/dev/null)
            mark "nbd-server=${server:-none}"
            ;;
        hold-*)
            # ko.test=hold-20: stay up 20 s (the harness acts on the servers meanwhile).
            mark "hold=${1#hold-}"
            sleep "${1#hold-}"
            ;;
        *) mark "unknown-action=$1" ;;
    esac
}

for arg in $cmdline; do
    case $arg in
        ko.test=*)
            for name in $(echo "${arg#ko.test=}" | tr ',' ' '); do action "$name"; done
            ;;
    esac
done

sync
mark "poweroff uptime=$(cut -d' ' -f1 /proc/uptime)"
poweroff -f
# Not reached unless poweroff failed.
echo o > /proc/sysrq-trigger
