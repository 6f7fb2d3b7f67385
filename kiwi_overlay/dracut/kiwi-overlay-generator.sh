#!/bin/sh
# systemd generator: kiwi-overlay writes the units that assemble the overlay root at /sysroot.
exec /usr/bin/kiwi-overlay generate "$@"
