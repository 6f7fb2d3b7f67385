#!/bin/bash
# shellcheck disable=SC2154 # moddir: set by dracut
# dracut module ko-bench-netem, for the benchmarks only (benchmarks/netem.py): with ko.bench.netem=DELAY
# on the kernel command line, every NIC delays what it sends by DELAY (tc netem, e.g. 2ms: that much
# more round-trip time to the server), from the moment it appears, before anything brings it up.
# Before the switch to the root, each NBD device's blk-mq hardware queues and their CPUs go to the
# console too: the nbd driver sends a request over the connection numbered like its queue.

# called by dracut
check() {
    # Never in an initrd unless asked for.
    return 255
}

# called by dracut
depends() {
    echo base
}

# called by dracut
installkernel() {
    hostonly='' instmods sch_netem
}

# called by dracut
install() {
    inst_multiple tc modprobe
    inst_script "$moddir/ko-bench-netem.sh" /sbin/ko-bench-netem
    inst_rules "$moddir/61-ko-bench-netem.rules"
    inst_hook pre-pivot 50 "$moddir/ko-bench-queues.sh"
}
