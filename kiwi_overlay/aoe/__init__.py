"""ATA over Ethernet: target discovery on the wire, attach through the kernel's aoe driver, and its keeper.

    protocol.py    AoE v1 frames: Query Config and ATA IDENTIFY built, answers parsed (no I/O)
    discovery.py   the wire probe over AF_PACKET raw sockets: which targets answer where, and locate()
    messages.py    what answered, for errors and `kiwi-overlay aoe discover`
    driver.py      the kernel's aoe driver: load it restricted, trigger its discovery, flush a target
    attach.py      attach_root(): the above in order, for the boot
    keeper.py      the `@kiwi-overlay-aoe` process: wakes the driver when it strands a request

Discovery speaks AoE v1 itself (Query Config broadcast, then an ATA IDENTIFY per answer for the
size), so the boot knows which targets answer where before it loads the driver, and a timeout can
say what did answer. attach_root() then loads `aoe` restricted to the boot interfaces, triggers the
driver's discovery with backoff, waits for the block device on kernel uevents (no udevd
needed), and lifts the restriction (see driver.unrestrict_driver). Nothing is imported here: the
keeper's process imports only its own module.
"""
