#!/bin/sh
# mount hook (initrds without systemd): attach the read device and assemble the overlay root at $NEWROOT.
# shellcheck source=/dev/null # dracut's library, in the initrd
type die > /dev/null 2>&1 || . /lib/dracut-lib.sh

# shellcheck disable=SC2154 # root is dracut's, set by kiwi-overlay-cmdline.sh
if [ "$root" = kiwi-overlay ] && ! ismounted "$NEWROOT"; then
    /usr/bin/kiwi-overlay mount --sysroot "$NEWROOT" \
        || die "kiwi-overlay: no overlay root, see the kiwi-overlay: line above (rd.kiwi.debug logs every step)"
fi
