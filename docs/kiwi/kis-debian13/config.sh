#!/bin/bash
# Runs inside the image root after the packages and root/ are in (KIWI's config.sh).
set -euo pipefail

# Debian wrote /boot/initrd.img-* when the kernel was installed, before root/ brought
# etc/dracut.conf.d/overlay.conf. At power-off dracut-shutdown.service unpacks that initrd as the
# shutdown initramfs: write it again with this configuration, so that it carries kiwi-overlay,
# whose shutdown hook disconnects the NBD device once the root is unmounted.
dracut --force --regenerate-all
