#!/bin/sh
# shutdown hook: detach the NBD devices once the real root is unmounted (non-zero: dracut retries).
/usr/bin/kiwi-overlay nbd detach --all
