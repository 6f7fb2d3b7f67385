"""The QEMU boot harness: guest kernel, root images, initrds, servers, guests.

    guest_kernel.py  guest_kernel() -> GuestKernel(version, vmlinuz, boot_file, moddir)   Debian 6.1, cached;
                     boot_file: the kernel uncompressed, which QEMU enters through its PVH note
    rootfs.py        root_image(fstype) -> Path (squashfs|erofs|ext4, cached); blank_disk(); ext4_disk()
    initrd.py        build_initrd(output=, systemd=, modules=, module_dirs=, ...) -> Path; stock_nbd_initrd()
    servers.py       NbdServer / QemuNbd (127.0.0.1, free port, stop()/start()), AoeTarget (vblade, bridge, tap)
    qemu.py          Guest(...), boot(guest, name=) -> BootResult; RunningGuest for acting mid-boot;
                     Disk(image, serial, readonly); initrd_disk(); the KO-MARK marker protocol on
                     the result channel (ttyS1, never printk's console); ResultChannel for own QEMUs
    distro.py        base_root(suite), distro_initrd(suite, form) -> DistroInitrd(kernel, initrd): Debian 12/13
                     roots (debootstrap, cached), kiwi-overlay installed as deb/pip/venv, dracut run inside;
                     root_initrd(suite, name, steps=, modules=) for any other packages and dracut modules
    demo.py          `make demo`

A scenario is: an initrd (built once per session), a root image, the servers, a Guest with the
command line (ko.test=... picks the root's actions), then assertions on the markers:

    with NbdServer(root_image("squashfs")) as server:
        result = boot(Guest(initrd=initrd, cmdline=f"root=overlay:{server.url()} ko.test=write-16M"), name="nbd-tmpfs")
    result.expect(root_fstype="overlay", write="ok")
"""
