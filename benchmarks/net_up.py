#!/usr/bin/env python3
"""Time from `kiwi-overlay net up` start to a usable DHCP address, against dnsmasq --no-ping.

A client namespace with a veth to a server namespace running dnsmasq; each run starts with the
link down and without an address, so it includes link up, carrier, DISCOVER..ACK and applying
the lease. Prints markdown table rows (median of --runs; --header adds the header):

    | step | median | min | max | runs |

"total" is the whole command (interpreter start, imports, plan, bring-up) from the first
instruction to exit; "bring-up" is what kiwi-overlay reports for bring_up() itself (including
the import of the netlink messages); "DHCP" is the time from carrier to the lease.
Needs root, iproute2 and dnsmasq; creates ko-bn-net-* namespaces and removes them.
"""

from __future__ import annotations

import argparse
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True)


def row(label: str, values: list[float]) -> str:
    ms = [value * 1000 for value in values]
    return f"| {label} | {statistics.median(ms):.0f} ms | {min(ms):.0f} ms | {max(ms):.0f} ms | {len(ms)} |"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=11)
    parser.add_argument("--header", action="store_true", help="print the table header first")
    parser.add_argument("--python", default=sys.executable, help="interpreter with kiwi_overlay installed")
    args = parser.parse_args()
    client = f"ko-bn-net-{uuid.uuid4().hex[:4]}"
    server = client + "-s"
    totals: list[float] = []
    bringups: list[float] = []
    dhcp: list[float] = []
    with tempfile.TemporaryDirectory(prefix="ko-bn-net-") as tmp:
        ip("netns", "add", client)
        ip("netns", "add", server)
        dnsmasq = None
        try:
            ip("-n", client, "link", "add", "ko-a", "type", "veth", "peer", "name", "ko-p", "netns", server)
            ip("-n", server, "addr", "add", "10.70.0.1/24", "dev", "ko-p")
            ip("-n", server, "link", "set", "ko-p", "up")
            dnsmasq = subprocess.Popen(
                ["ip", "netns", "exec", server, "dnsmasq", "--no-daemon", "--no-ping", "--port=0", "--conf-file=/dev/null",
                 "--interface=ko-p", "--bind-interfaces", "--dhcp-range=10.70.0.50,10.70.0.99,255.255.255.0,1h",
                 "--dhcp-option=option:router,10.70.0.1", f"--dhcp-leasefile={tmp}/leases", f"--pid-file={tmp}/pid"],
                stderr=subprocess.DEVNULL,
            )  # fmt: skip
            time.sleep(0.5)  # dnsmasq binds its socket
            argv = ["ip", "netns", "exec", client, args.python, "-m", "kiwi_overlay", "net", "up", "--timeout", "30"]
            argv += ["--cmdline", "root=overlay:nbd=10.70.0.1:rootfs ip=ko-a:dhcp"]
            argv += ["--lease-dir", tmp, "--resolv-conf", f"{tmp}/resolv.conf"]
            for _ in range(args.runs):
                ip("-n", client, "link", "set", "ko-a", "down")
                ip("-n", client, "addr", "flush", "dev", "ko-a")
                started = time.perf_counter()
                result = subprocess.run(argv, capture_output=True, text=True, check=False)
                totals.append(time.perf_counter() - started)
                reported = re.search(r"network up in ([\d.]+) s", result.stderr)
                carrier = re.search(r"carrier on ko-a \(([\d.]+) s\)", result.stderr)
                lease = re.search(r"DHCP lease .* \(([\d.]+) s\)", result.stderr)
                if result.returncode != 0 or not (reported and carrier and lease):
                    print(result.stderr, file=sys.stderr)
                    return 1
                bringups.append(float(reported[1]))
                dhcp.append(float(lease[1]) - float(carrier[1]))
        finally:
            if dnsmasq:
                dnsmasq.send_signal(signal.SIGTERM)
                dnsmasq.wait()
            ip("netns", "del", client)
            ip("netns", "del", server)
    if args.header:
        print("| step | median | min | max | runs |")
        print("|---|---|---|---|---|")
    print(row("`kiwi-overlay net up` to a usable DHCP address (total)", totals))
    print(row("`bring_up()`: link up, carrier, DHCP, address, route", bringups))
    print(row("DHCP DISCOVER to lease (after carrier)", dhcp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
