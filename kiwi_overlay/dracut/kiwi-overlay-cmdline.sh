#!/bin/sh
# cmdline hook: is root= an overlay root? kiwi-overlay reads and checks the command line itself.
# For NBD it adds rd.neednet=1 (and ip=dhcp without ip=) to /etc/cmdline.d and asks for need_shutdown.
# shellcheck source=/dev/null # dracut's library, in the initrd
type die > /dev/null 2>&1 || . /lib/dracut-lib.sh

/usr/bin/kiwi-overlay dracut-cmdline
case $? in
    0)
        # dracut goes on; no stock module knows this root, so none tries to mount it.
        # shellcheck disable=SC2034 # dracut's variables: this file is sourced by its cmdline stage
        rootok=1
        # shellcheck disable=SC2034
        root=kiwi-overlay
        ;;
    1) ;;
    *) die "kiwi-overlay: invalid kernel command line, see the kiwi-overlay: line above" ;;
esac
