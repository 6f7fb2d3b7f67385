#!/bin/sh
# cmdline hook: is root= an overlay root? kiwi-overlay reads the command line itself and claims the
# root by its form; the mount step checks every option. For NBD it adds rd.neednet=1 (and ip=dhcp
# without ip=) to /etc/cmdline.d and asks for need_shutdown.
# With systemd its generator has done that already and left the answer: no second interpreter start.
# shellcheck source=/dev/null # dracut's library, in the initrd
type die > /dev/null 2>&1 || . /lib/dracut-lib.sh

if [ -r /run/kiwi-overlay/dracut-cmdline ]; then
    read -r _kiwi_overlay_answer < /run/kiwi-overlay/dracut-cmdline
    # The generator's cmdline.d file goes in only now: there earlier, it starts dracut-cmdline-ask.service.
    if [ -e /run/kiwi-overlay/kiwi-overlay-net.conf ]; then
        mkdir -p /etc/cmdline.d && mv -f /run/kiwi-overlay/kiwi-overlay-net.conf /etc/cmdline.d/
    fi
else
    /usr/bin/kiwi-overlay dracut-cmdline
    _kiwi_overlay_answer=$?
fi
case $_kiwi_overlay_answer in
    0)
        # dracut goes on; no stock module knows this root, so none tries to mount it.
        # shellcheck disable=SC2034 # dracut's variables: this file is sourced by its cmdline stage
        rootok=1
        # shellcheck disable=SC2034
        root=kiwi-overlay
        ;;
    1) ;;
    *) die "kiwi-overlay: the cmdline hook failed, see the kiwi-overlay: line above" ;;
esac
unset _kiwi_overlay_answer
