"""The QEMU boot harness: guest kernel, root images, initrds, servers, guests."""
