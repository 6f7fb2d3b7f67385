#!/bin/sh
# shutdown hook, once the real root is unmounted: leave a persistent write layer clean (synced,
# unmounted or read-only) and detach the NBD devices (non-zero: dracut retries).
/usr/bin/kiwi-overlay shutdown
