#!/bin/sh
# pre-pivot hook (benchmarks only, with ko.bench.netem=): the blk-mq hardware queues of each connected
# NBD device and the CPUs mapped to each, on the console: which connections can carry requests at all.
# shellcheck source=/dev/null # dracut's library, in the initrd
type getarg > /dev/null 2>&1 || . /lib/dracut-lib.sh

getarg ko.bench.netem= > /dev/null || return 0
for _kbq_queues in /sys/block/nbd*/mq; do
    _kbq_device=${_kbq_queues%/mq}
    read -r _kbq_size < "$_kbq_device/size" || continue
    [ "$_kbq_size" != 0 ] || continue # not connected
    _kbq_line=
    for _kbq_queue in "$_kbq_queues"/*; do
        read -r _kbq_cpus < "$_kbq_queue/cpu_list"
        _kbq_line="${_kbq_line:+$_kbq_line; }queue ${_kbq_queue##*/} (CPUs $_kbq_cpus)"
    done
    echo "ko-bench-netem: ${_kbq_device##*/} hardware queues: $_kbq_line" > /dev/kmsg
done
