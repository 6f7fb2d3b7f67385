"""kiwi_overlay.netlink: pyroute2's messages without its package initializer, over the standard
library's sockets, against the kernel in namespaces the tests create (each in a fresh interpreter)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.netns import network_namespace
from tests.test_net import PYROUTE2_RELEASES, python_with_pyroute2

CHECKOUT = Path(__file__).resolve().parents[1]


def python(code: str, *, netns: str | None = None, interpreter: Path = Path(sys.executable)) -> str:
    argv = [str(interpreter), "-c", code]
    env = {"PYTHONPATH": str(CHECKOUT), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    result = subprocess.run(["ip", "netns", "exec", netns, *argv] if netns else argv, capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def ip(netns: str, *args: str) -> str:
    return subprocess.run(["ip", "-n", netns, *args], check=True, capture_output=True, text=True).stdout


@pytest.fixture
def netns() -> Iterator[str]:
    with network_namespace("ko-netlink") as name:
        yield name


def test_the_messages_load_neither_pyroute2s_sockets_nor_asyncio_nor_ndb() -> None:
    loaded = python(
        "import sys\n"
        "from kiwi_overlay.netlink import pyroute\n"
        "from kiwi_overlay.netlink import route, generic\n"
        "values = [getattr(pyroute, name) for name in pyroute.EXPORTS]\n"
        "heavy = ('asyncio', 'ssl', 'sqlite3', 'pyroute2.ndb.main', 'pyroute2.iproute.linux', 'pyroute2.netlink.nlsocket', 'unittest')\n"
        "print(sorted(name for name in heavy if name in sys.modules))"
    )
    assert loaded == "[]"


def test_a_name_is_the_one_its_submodule_defines() -> None:
    assert (
        python(
            "from kiwi_overlay.netlink.pyroute import ifinfmsg, NetlinkError\n"
            "import pyroute2.netlink.rtnl.ifinfmsg, pyroute2.netlink.exceptions\n"
            "print(ifinfmsg is pyroute2.netlink.rtnl.ifinfmsg.ifinfmsg, NetlinkError is pyroute2.netlink.exceptions.NetlinkError)"
        )
        == "True True"
    )


def test_a_name_it_does_not_export_is_an_attribute_error() -> None:
    from kiwi_overlay.netlink import pyroute

    with pytest.raises(AttributeError, match="IPRoute"):
        pyroute.IPRoute  # noqa: B018


def test_a_name_of_the_package_runs_its_initializer_on_demand() -> None:
    # Code elsewhere in the same process may still write `from pyroute2 import IPRoute`.
    assert (
        python(
            "from kiwi_overlay.netlink.pyroute import ifinfmsg\n"
            "from pyroute2 import IPRoute, NDB\n"
            "import pyroute2.netlink.rtnl.ifinfmsg\n"
            "print(IPRoute.__name__, NDB.__name__, pyroute2.netlink.rtnl.ifinfmsg.ifinfmsg is ifinfmsg)"
        )
        == "IPRoute NDB True"
    )


def test_nothing_changes_once_pyroute2_is_imported() -> None:
    assert (
        python(
            "import pyroute2, sys\n"
            "from kiwi_overlay.netlink.pyroute import ifinfmsg\n"
            "print(sys.modules['pyroute2'] is pyroute2, hasattr(pyroute2, 'NDB'))"
        )
        == "True True"
    )


# Every request kiwi-overlay's bring-up makes, in a namespace, printing what the kernel answered.
ROUTE_REQUESTS = """
import json, socket
from kiwi_overlay.netlink.pyroute import NetlinkError
from kiwi_overlay.netlink.route import Route
seen = {}
with Route() as rtnl:
    rtnl.set_link(rtnl.link_index("lo"), up=True)
    rtnl.add_link("ko-br", "bridge", data=(("IFLA_BR_FORWARD_DELAY", 0),))
    index = rtnl.link_index("ko-br")
    seen["kind"] = rtnl.link_kind(index)
    rtnl.set_link(index, up=True, mtu=1400, address="02:00:00:00:00:09", name="ko-br2")
    rtnl.address("replace", index=index, address="10.9.0.2", prefixlen=24, broadcast="10.9.0.255")
    rtnl.address("replace", index=index, address="fd00:9::2", prefixlen=64, flags=0x02)
    rtnl.route("add", dst="0.0.0.0/0", gateway="10.9.0.1", oif=index)
    rtnl.route("replace", dst="10.7.0.0/16", oif=index)
    try:
        rtnl.route("add", dst="0.0.0.0/0", gateway="10.9.0.1", oif=index)
    except NetlinkError as error:
        seen["again"] = error.code
    seen["v6"] = sorted(a.get_attr("IFA_ADDRESS") for a in rtnl.addresses(socket.AF_INET6) if a["index"] == index)
    print(json.dumps(seen))
"""
ROUTE_UNDO = """
from kiwi_overlay.netlink.route import Route
with Route() as rtnl:
    index = rtnl.link_index("ko-br2")
    rtnl.route("delete", dst="0.0.0.0/0", gateway="10.9.0.1", oif=index)
    rtnl.address("delete", index=index, address="fd00:9::2", prefixlen=64)
    rtnl.delete_link(index)
    print(rtnl.link_index("ko-br2"))
"""


@pytest.mark.root
@pytest.mark.parametrize("release", ["pypi", *PYROUTE2_RELEASES])
def test_links_addresses_and_routes_as_the_kernel_sees_them(netns: str, release: str) -> None:
    interpreter = Path(sys.executable) if release == "pypi" else python_with_pyroute2(release)
    seen = json.loads(python(ROUTE_REQUESTS, netns=netns, interpreter=interpreter))
    assert seen == {"kind": "bridge", "again": 17, "v6": ["fd00:9::2"]}  # EEXIST: a NetlinkError with the kernel's code
    (link,) = json.loads(ip(netns, "-j", "-d", "link", "show", "ko-br2"))
    assert (link["mtu"], link["address"], "UP" in link["flags"]) == (1400, "02:00:00:00:00:09", True)
    assert link["linkinfo"]["info_data"]["forward_delay"] == 0
    addresses = {
        (a["local"], a["prefixlen"], a.get("broadcast")) for a in json.loads(ip(netns, "-j", "addr", "show", "ko-br2"))[0]["addr_info"]
    }
    assert ("10.9.0.2", 24, "10.9.0.255") in addresses
    v6 = [a for a in json.loads(ip(netns, "-j", "-6", "addr", "show", "ko-br2"))[0]["addr_info"] if a["local"] == "fd00:9::2"]
    assert v6 and v6[0].get("nodad") and not v6[0].get("tentative")
    routes = {(r["dst"], r.get("gateway"), r["protocol"], r.get("scope")) for r in json.loads(ip(netns, "-d", "-j", "route", "show"))}
    assert ("default", "10.9.0.1", "boot", "global") in routes and ("10.7.0.0/16", None, "boot", "link") in routes
    assert python(ROUTE_UNDO, netns=netns, interpreter=interpreter) == "None"
    assert json.loads(ip(netns, "-j", "link", "show")) == [json.loads(ip(netns, "-j", "link", "show", "lo"))[0]]


@pytest.mark.root
def test_a_dump_spanning_several_datagrams_is_read_to_its_end(netns: str) -> None:
    for number in range(48):  # about 1.5 KB each: more than one 32 KB datagram
        ip(netns, "link", "add", f"ko-br{number}", "type", "bridge")
    code = (
        "from kiwi_overlay.netlink.route import Route\n"
        "with Route() as rtnl:\n"
        "    print(len(rtnl.links()), rtnl.link_index('ko-br47') is not None)"
    )
    assert python(code, netns=netns) == "49 True"


def test_a_generic_family_and_its_groups_by_name() -> None:
    code = (
        "import errno\n"
        "from kiwi_overlay.netlink.generic import GenericSocket\n"
        "from kiwi_overlay.netlink.pyroute import NetlinkError, ctrlmsg\n"
        "with GenericSocket() as control:\n"
        "    control.bind('nlctrl', ctrlmsg)\n"
        "    print(control.family, 'notify' in control.groups)\n"
        "    try:\n"
        "        control.bind('ko-nofamily', ctrlmsg)  # names have at most 15 characters\n"
        "    except NetlinkError as error:\n"
        "        print(error.code == errno.ENOENT)\n"
    )
    assert python(code).split() == ["16", "True", "True"]
