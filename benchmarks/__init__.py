"""`make bench`: kiwi-overlay measured against the tools users would pick instead; writes BENCHMARKS.md.

    stats.py        medians, percentiles, ratios, the machine description
    boot_time.py    1. kernel start to the root's init: kiwi-overlay vs dracut's nbd + rootovl (QEMU TCG)
    debian13.py     1b. the same on Debian 13: its kernel, and initrds built by its dracut (.deb vs stock)
    boot_phases.py  2. where kiwi-overlay's time goes in the initrd (rd.kiwi.debug timestamps)
    negotiation.py  3. NBD negotiation on loopback: kiwi-overlay vs nbd-client
    initrd_size.py  4. initrd size with and without the module
    throughput.py   5. sequential read of the root device in the guest, 1 and 4 connections vs nbd-client
    storm.py        6. many clients negotiating and reading at once against one nbd-server
    net_up.py       network bring-up vs dnsmasq (extra)
    run.py          runs them all (`python -m benchmarks [--quick]`)
Boots reuse the harness in tests/boot/; nothing here copies it.
"""
