#!/bin/sh
# ko-bench-netem IFACE (a udev RUN): delay what IFACE sends by ko.bench.netem= (benchmarks only).
# The qdisc it set, or why it failed, goes to the console: the benchmark reads it from there.
# shellcheck source=/dev/null # dracut's library, in the initrd
. /lib/dracut-lib.sh

delay=$(getarg ko.bench.netem=) || exit 0
modprobe sch_netem
if out=$(tc qdisc replace dev "$1" root netem delay "$delay" 2>&1); then
    echo "ko-bench-netem: $1: $(tc qdisc show dev "$1" root)" > /dev/kmsg
else
    echo "ko-bench-netem: $1: tc qdisc replace dev $1 root netem delay $delay failed: $out" > /dev/kmsg
fi
