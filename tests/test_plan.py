"""Every root and overlay option parsed into the plan, and every malformed one refused in one line."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from typing import Any

import pytest

from kiwi_overlay.cmdline import KernelCmdline
from kiwi_overlay.config.parse import parse_plan
from kiwi_overlay.config.plan import NbdRoot
from kiwi_overlay.errors import OptionError
from kiwi_overlay.explain import describe


def explain(cmdline: str) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-m", "kiwi_overlay", "explain", "--json", "--cmdline", cmdline], capture_output=True, text=True, check=True
    )
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def network_basics(plan: dict[str, Any]) -> dict[str, Any]:
    """The network fields this file is about (test_net_grammar.py checks the parsed ip= and friends)."""
    return {key: plan["network"][key] for key in ("needed", "needs_ip", "ip", "implied_dhcp")}


def test_issue_example_nbd_with_size() -> None:
    plan = explain("root=overlay:nbd=192.168.1.1:rootfs rd.root.overlay.size=2g")
    assert plan["root"] == {
        "transport": "nbd",
        "host": "192.168.1.1",
        "port": 10809,
        "export": "rootfs",
        "tls": False,
        "connections": 1,
        "io_timeout": None,
        "tls_ca": None,
        "tls_cert": None,
        "tls_key": None,
        "device": None,
        "uri": "nbd://192.168.1.1:10809/rootfs",
        "servers": [{"host": "192.168.1.1", "port": 10809, "export": "rootfs"}],
        "lost": {"action": "wait", "seconds": None},
    }
    assert plan["write"]["kind"] == "tmpfs"
    assert plan["write"]["size"] == "2g"
    assert plan["write"]["size_bytes"] == 2 << 30
    assert network_basics(plan) == {"needed": True, "needs_ip": True, "ip": ["dhcp"], "implied_dhcp": True}
    assert [m["target"] for m in plan["mounts"]] == ["/run/overlay", "/run/overlay/rootfsbase", "/sysroot"]
    assert plan["mounts"][0]["options"] == ["size=2g", "mode=0755"]


@pytest.mark.parametrize(
    ("root", "host", "port", "export", "tls"),
    [
        ("overlay:nbd=server.example:root-fs", "server.example", 10809, "root-fs", False),
        ("overlay:nbd=[fd00::1]:rootfs", "fd00::1", 10809, "rootfs", False),
        ("overlay:nbd=10.0.0.1:a:b", "10.0.0.1", 10809, "a:b", False),
        ("overlay:nbd://10.0.0.1/rootfs", "10.0.0.1", 10809, "rootfs", False),
        ("overlay:nbd://10.0.0.1:10900/images/root%20fs", "10.0.0.1", 10900, "images/root fs", False),
        ("overlay:nbds://[fe80::1%eth0]:10901/rootfs", "fe80::1%eth0", 10901, "rootfs", True),
        ("overlay:nbd://host/", "host", 10809, "", False),
    ],
)
def test_nbd_forms(root: str, host: str, port: int, export: str, tls: bool) -> None:
    plan = explain(f"root={root}")
    assert (plan["root"]["host"], plan["root"]["port"], plan["root"]["export"], plan["root"]["tls"]) == (host, port, export, tls)
    assert plan["network"]["needs_ip"] is True


def test_nbd_options() -> None:
    plan = explain(
        "root=overlay:nbd=10.0.0.1:rootfs ip=eth0:dhcp rd.root.overlay.nbd.connections=4 rd.root.overlay.nbd.timeout=30 "
        "rd.root.overlay.nbd.tls.ca=/etc/ca.pem rd.root.overlay.timeout=45"
    )
    assert plan["root"]["connections"] == 4
    assert plan["root"]["io_timeout"] == 30
    assert plan["root"]["tls"] is True  # a CA asks for TLS
    assert plan["root"]["tls_ca"] == "/etc/ca.pem"
    assert plan["timeout"] == 45
    assert network_basics(plan) == {"needed": True, "needs_ip": True, "ip": ["eth0:dhcp"], "implied_dhcp": False}


@pytest.mark.parametrize(
    ("root", "uris"),
    [
        ("overlay:nbd=10.0.0.1,10.0.0.2:rootfs", ["nbd://10.0.0.1:10809/rootfs", "nbd://10.0.0.2:10809/rootfs"]),
        ("overlay:nbd=[fd00::1],server.example:a:b", ["nbd://[fd00::1]:10809/a:b", "nbd://server.example:10809/a:b"]),
        ("overlay:nbd://10.0.0.1/x,y,nbd://10.0.0.2:10900/z", ["nbd://10.0.0.1:10809/x,y", "nbd://10.0.0.2:10900/z"]),
        ("overlay:nbds://a/r,nbds://b/r", ["nbds://a:10809/r", "nbds://b:10809/r"]),
    ],
)
def test_several_servers(root: str, uris: list[str]) -> None:
    plan = parse_plan(KernelCmdline(f"root={root}"))
    assert isinstance(plan.root, NbdRoot)
    assert [plan.root.server_uri(server) for server in plan.root.servers] == uris
    assert plan.root.uri == uris[0]  # messages and the network check name the first


@pytest.mark.parametrize(
    ("value", "action", "seconds", "line"),
    [
        (None, "wait", None, "I/O waits until a server answers again"),
        ("wait", "wait", None, "I/O waits until a server answers again"),
        ("fail:30", "fail", 30.0, "I/O on the root fails after 30 s without a server"),
        ("reboot:2.5", "reboot", 2.5, "the machine reboots after 2.5 s without a server"),
    ],
)
def test_lost_server_policy(value: str | None, action: str, seconds: float | None, line: str) -> None:
    option = f" rd.root.overlay.nbd.lost={value}" if value else ""
    plan = explain(f"root=overlay:nbd=10.0.0.1,10.0.0.2:rootfs{option}")
    assert plan["root"]["lost"] == {"action": action, "seconds": seconds}
    text = describe(parse_plan(KernelCmdline(f"root=overlay:nbd=10.0.0.1,10.0.0.2:rootfs{option}")))
    assert f"server lost: {line}" in text
    assert "or, in this order, 'rootfs' on 10.0.0.2:10809: the first that answers" in text


def test_aoe_target() -> None:
    plan = explain("root=overlay:aoe=e12.3 rd.root.overlay.aoe.interfaces=eth0,eth1")
    assert plan["root"]["target"] == "e12.3"
    assert plan["root"]["interface"] is None
    assert plan["root"]["interfaces"] == ["eth0", "eth1"]
    assert plan["root"]["device"] == "/dev/etherd/e12.3"
    assert network_basics(plan) == {"needed": True, "needs_ip": False, "ip": [], "implied_dhcp": False}


def test_aoe_interface() -> None:
    plan = explain("root=overlay:aoe=enp0s3")
    assert plan["root"]["target"] is None
    assert plan["root"]["interface"] == "enp0s3"
    assert plan["root"]["interfaces"] == ["enp0s3"]
    assert plan["root"]["device"] is None
    assert plan["network"]["needs_ip"] is False


@pytest.mark.parametrize(
    ("spec", "device"),
    [
        ("UUID=0a1b2c3d-4e5f", "/dev/disk/by-uuid/0a1b2c3d-4e5f"),
        ("PARTUUID=1234-01", "/dev/disk/by-partuuid/1234-01"),
        ("LABEL=root", "/dev/disk/by-label/root"),
        ("LABEL=images/root", "/dev/disk/by-label/images\\x2froot"),
        ("PARTLABEL=p/1", "/dev/disk/by-partlabel/p\\x2f1"),
        ("UNIXNODE=loop0", "/dev/loop0"),
        ("MAPPER=vg-root", "/dev/mapper/vg-root"),
    ],
)
def test_local_forms(spec: str, device: str) -> None:
    plan = explain(f"root=overlay:{spec}")
    assert plan["root"] == {"transport": "local", "spec": spec, "device": device}
    assert plan["network"]["needed"] is False
    assert plan["mounts"][1]["source"] == device


def test_quoted_label_with_space() -> None:
    plan = explain('root="overlay:LABEL=my root"')
    assert plan["root"]["device"] == "/dev/disk/by-label/my\\x20root"


def test_write_device_and_flags() -> None:
    plan = explain("root=overlay:LABEL=r rd.root.overlay.write=LABEL=cow rd.root.overlay.reset rootflags=redirect_dir=on rootfstype=erofs")
    assert plan["write"] == {
        "kind": "device",
        "size": "50%",
        "size_bytes": None,
        "device": "/dev/disk/by-label/cow",
        "reset": True,
        "fallback_tmpfs": False,
        "fsck": True,
    }
    assert plan["mounts"][1]["fstype"] == "erofs"
    assert plan["mounts"][2] == {
        "source": "/dev/disk/by-label/cow",
        "target": "/run/overlay/overlayfs",
        "fstype": None,
        "options": ["rw"],
        "purpose": "write layer",
    }
    assert plan["mounts"][3]["options"][-1] == "redirect_dir=on"


def test_temporary_overrides_write_device() -> None:
    plan = explain("root=overlay:LABEL=r rd.root.overlay.write=/dev/vdb rd.root.overlay.temporary")
    assert plan["write"]["kind"] == "tmpfs"
    assert plan["write"]["device"] == "/dev/vdb"
    assert len(plan["mounts"]) == 3


def test_readonly_overrides_everything() -> None:
    plan = explain("root=overlay:LABEL=r rd.root.overlay.write=/dev/vdb rd.root.overlay.temporary rd.root.overlay.readonly")
    assert plan["write"]["kind"] == "none"
    assert plan["readonly"] is True
    assert plan["mounts"][-1]["options"] == ["bind", "ro"]


def test_false_flags_are_false() -> None:
    plan = parse_plan(KernelCmdline("root=overlay:LABEL=r rd.root.overlay.readonly=0 rd.kiwi.debug=off rd.root.overlay.temporary=no"))
    assert not plan.readonly
    assert not plan.debug
    assert plan.write.kind == "tmpfs"


def test_last_occurrence_wins() -> None:
    plan = explain("root=overlay:LABEL=a root=overlay:aoe=e0.1 rd.root.overlay.size=1g rd.root.overlay.size=8M")
    assert plan["root"]["transport"] == "aoe"
    assert plan["write"]["size_bytes"] == 8 << 20


def test_neednet_for_local_root() -> None:
    assert explain("root=overlay:LABEL=r rd.neednet=1 ip=dhcp")["network"]["needs_ip"] is True


def test_not_for_kiwi_overlay() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "kiwi_overlay", "explain", "--json", "--cmdline", "root=/dev/sda1 ro quiet"], capture_output=True, text=True
    )
    assert result.returncode == 0
    assert json.loads(result.stdout) == {"root": None}
    human = subprocess.run([sys.executable, "-m", "kiwi_overlay", "explain", "--cmdline", "root=/dev/sda1"], capture_output=True, text=True)
    assert human.returncode == 0
    assert "not an overlay root" in human.stdout


def test_human_output_names_the_parts() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "kiwi_overlay", "explain", "--cmdline", "root=overlay:nbd=10.0.0.1:rootfs rd.root.overlay.write=LABEL=cow"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "NBD export 'rootfs' on 10.0.0.1:10809" in result.stdout
    assert "write layer: /dev/disk/by-label/cow" in result.stdout
    assert "kiwi-overlay-watch warns on the console and in the journal at 80, 90 and 95 % full" in result.stdout
    assert "ip=dhcp (implied)" in result.stdout


BAD = [
    ("root=overlay:nbd=10.0.0.1", "root=overlay:nbd=10.0.0.1"),
    ("root=overlay:nbd=:rootfs", "root=overlay:nbd=:rootfs"),
    ("root=overlay:nbd=300.1.1.1:rootfs", "root=overlay:nbd=300.1.1.1:rootfs"),
    ("root=overlay:nbd=[fe80::1:rootfs", "root=overlay:nbd=[fe80::1:rootfs"),
    ("root=overlay:nbd://10.0.0.1:99999/rootfs", "root=overlay:nbd://10.0.0.1:99999/rootfs"),
    ("root=overlay:nbd://10.0.0.1:abc/rootfs", "root=overlay:nbd://10.0.0.1:abc/rootfs"),
    ("root=overlay:nbd://10.0.0.1", "root=overlay:nbd://10.0.0.1"),
    ("root=overlay:aoe=e0.255", "root=overlay:aoe=e0.255"),
    ("root=overlay:aoe=e1.x", "root=overlay:aoe=e1.x"),
    ("root=overlay:aoe=", "root=overlay:aoe="),
    ("root=overlay:aoe=eth0/1", "root=overlay:aoe=eth0/1"),
    ("root=overlay:LABEL=", "root=overlay:LABEL="),
    ("root=overlay:UUID=a/b", "root=overlay:UUID=a/b"),
    ("root=overlay:iscsi=x", "root=overlay:iscsi=x"),
    ("root=overlay:", "root=overlay:"),
    ("root=overlay:LABEL=r rd.root.overlay.size=0", "rd.root.overlay.size=0"),
    ("root=overlay:LABEL=r rd.root.overlay.size=150%", "rd.root.overlay.size=150%"),
    ("root=overlay:LABEL=r rd.root.overlay.size=2x", "rd.root.overlay.size=2x"),
    ("root=overlay:LABEL=r rd.root.overlay.timeout=soon", "rd.root.overlay.timeout=soon"),
    ("root=overlay:LABEL=r rd.root.overlay.timeout=-5", "rd.root.overlay.timeout=-5"),
    ("root=overlay:LABEL=r rd.root.overlay.write=cow", "rd.root.overlay.write=cow"),
    ("root=overlay:LABEL=r rd.root.overlay.write=MAPPER=x", "rd.root.overlay.write=MAPPER=x"),
    ("root=overlay:LABEL=r rd.root.overlay.write.fallback=ram", "rd.root.overlay.write.fallback=ram"),
    ("root=overlay:nbd=h:e rd.root.overlay.nbd.connections=0", "rd.root.overlay.nbd.connections=0"),
    ("root=overlay:nbd=h:e rd.root.overlay.nbd.connections=many", "rd.root.overlay.nbd.connections=many"),
    ("root=overlay:nbd=h:e rd.root.overlay.nbd.timeout=0", "rd.root.overlay.nbd.timeout=0"),
    ("root=overlay:nbd=h:e rd.root.overlay.nbd.tls.ca=ca.pem", "rd.root.overlay.nbd.tls.ca=ca.pem"),
    ("root=overlay:nbd=h:e rd.root.overlay.nbd.tls.cert=/c.pem", "rd.root.overlay.nbd.tls.cert=/c.pem"),
    ("root=overlay:aoe=e0.1 rd.root.overlay.aoe.interfaces=,", "rd.root.overlay.aoe.interfaces=,"),
    ("root=overlay:nbd=10.0.0.1,:rootfs", "root=overlay:nbd=10.0.0.1,:rootfs"),
    ("root=overlay:nbd=10.0.0.1,10.0.0.1:rootfs", "root=overlay:nbd=10.0.0.1,10.0.0.1:rootfs"),
    ("root=overlay:nbd=a,b,c,d,e,f,g,h,i:rootfs", "root=overlay:nbd=a,b,c,d,e,f,g,h,i:rootfs"),
    ("root=overlay:nbd://10.0.0.1/a,nbds://10.0.0.2/a", "root=overlay:nbd://10.0.0.1/a,nbds://10.0.0.2/a"),
    ("root=overlay:nbd://10.0.0.1/a,nbd://10.0.0.2", "root=overlay:nbd://10.0.0.1/a,nbd://10.0.0.2"),
    ("root=overlay:nbd=h:e rd.root.overlay.nbd.lost=never", "rd.root.overlay.nbd.lost=never"),
    ("root=overlay:nbd=h:e rd.root.overlay.nbd.lost=fail", "rd.root.overlay.nbd.lost=fail"),
    ("root=overlay:nbd=h:e rd.root.overlay.nbd.lost=reboot:0", "rd.root.overlay.nbd.lost=reboot:0"),
    ("root=overlay:nbd=h:e rd.root.overlay.nbd.lost=reboot:٣", "rd.root.overlay.nbd.lost=reboot:٣"),
    ("root=overlay:nbd=h:e rd.root.overlay.nbd.lost=fail:1e9", "rd.root.overlay.nbd.lost=fail:1e9"),
    ("root=overlay:LABEL=r rootfstype=ext4;rm", "rootfstype=ext4;rm"),
    ("root=overlay:nbd=h:e bootdev=..", "bootdev=.."),
    ("root=overlay:nbd=h:e bootdev=éééééééé", "bootdev=éééééééé"),  # 8 characters, 16 bytes: the kernel counts bytes
]


@pytest.mark.parametrize(("cmdline", "shown"), BAD)
def test_malformed_option_gives_one_line_error(cmdline: str, shown: str) -> None:
    result = subprocess.run([sys.executable, "-m", "kiwi_overlay", "explain", "--cmdline", cmdline], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"kiwi-overlay: {shown}: ")
    match = re.fullmatch(r"kiwi-overlay: .+: .+; e\.g\. (\S+=\S+)( \S+=\S+)*", lines[0])
    assert match, lines[0]
    # The example itself must be valid: it parses (alone, or with an overlay root added).
    example = lines[0].split("; e.g. ", 1)[1]
    base = "" if example.startswith("root=") else "root=overlay:nbd=h:e "
    parse_plan(KernelCmdline(base + example))


def test_option_error_carries_its_parts() -> None:
    with pytest.raises(OptionError) as error:
        parse_plan(KernelCmdline("root=overlay:LABEL=r rd.root.overlay.size=lots"))
    assert (error.value.option, error.value.value) == ("rd.root.overlay.size", "lots")


def test_an_unexpected_error_is_one_line_and_exit_2(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Exit 1 would tell dracut's cmdline hook "not an overlay root": a bug must stop the boot like bad input."""
    from kiwi_overlay import cli, explain

    def broken(plan: object) -> str:
        raise ValueError("broken on purpose")

    monkeypatch.setattr(explain, "describe", broken)
    assert cli.main(["explain", "--cmdline", "root=overlay:LABEL=r"]) == 2
    assert capsys.readouterr().err == "kiwi-overlay: explain: unexpected ValueError: broken on purpose (rd.kiwi.debug logs the traceback)\n"


def test_explain_names_the_tls_files_and_warns_that_an_initrd_has_no_system_cas() -> None:
    from kiwi_overlay.explain import describe

    files = "rd.root.overlay.nbd.tls.ca=/etc/kiwi-overlay/tls/ca.pem rd.root.overlay.nbd.tls.cert=/c.pem rd.root.overlay.nbd.tls.key=/k.pem"
    text = describe(parse_plan(KernelCmdline(f"root=overlay:nbds://10.0.2.2/root {files}")))
    assert "TLS: server verified with /etc/kiwi-overlay/tls/ca.pem" in text
    assert "TLS: client certificate /c.pem, key /k.pem" in text
    assert "the system CAs (an initrd has none unless installed)" in describe(
        parse_plan(KernelCmdline("root=overlay:nbds://10.0.2.2/root"))
    )
