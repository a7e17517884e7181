"""A private network namespace for the LiveKit tests, so every ICE candidate is loopback.

libwebrtc (inside the ``livekit`` rtc SDK) gathers host candidates on every non-loopback
interface and ignores ``lo``; on a normal host it would advertise the machine's LAN
addresses. In a fresh namespace that holds only ``lo`` plus one dummy-type device carrying
``127.0.0.2/32`` (an address inside 127.0.0.0/8, so every packet is delivered locally),
the only candidates left are loopback addresses: nothing can leave the machine.

Processes (livekit-server, the worker) are started inside with ``nsenter --net=...``; the
test's own thread joins with ``setns(2)`` for the duration of a test and leaves afterwards.
The rtc SDK's native threads are created by whichever thread first uses it, so they end up
in the namespace too (they live for the rest of the session; only these tests use them).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

CLONE_NEWNET = 0x40000000
CLIENT_ADDRESS = "127.0.0.2"
_DEVICE_TYPES = ("ifb", "dummy", "veth")


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def _setup_script() -> str:
    """Shell run inside the new namespace: lo up, one 127.0.0.2 device, then wait."""
    attempts = []
    for kind in _DEVICE_TYPES:
        extra = " peer name rtc1" if kind == "veth" else ""
        attempts.append(f"ip link add rtc0 type {kind}{extra} 2>/dev/null")
    add = " || ".join(attempts)
    return (
        "set -e; ip link set lo up; "
        f"{{ {add}; }} || {{ echo 'no dummy-type device available' >&2; exit 3; }}; "
        "ip link set dev rtc0 addrgenmode none 2>/dev/null || true; "
        f"ip addr add {CLIENT_ADDRESS}/32 dev rtc0; ip link set rtc0 up; "
        "echo ready; exec sleep 2147483647"
    )


class NetNs:
    """A network namespace kept alive by a sleeping holder process."""

    def __init__(self, holder: subprocess.Popen[str]) -> None:
        self.holder = holder
        self.path = f"/proc/{holder.pid}/ns/net"
        self._fd = os.open(self.path, os.O_RDONLY)

    @classmethod
    def create(cls) -> NetNs:
        """Raise ``RuntimeError`` with the reason when namespaces are not available."""
        for tool in ("unshare", "nsenter", "ip"):
            if shutil.which(tool) is None:
                raise RuntimeError(f"{tool} not found (util-linux / iproute2)")
        holder = subprocess.Popen(
            ["unshare", "--net", "--", "sh", "-c", _setup_script()],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert holder.stdout is not None
        line = holder.stdout.readline().strip()
        if line != "ready":
            holder.kill()
            _out, err = holder.communicate(timeout=5)
            raise RuntimeError(f"cannot create a network namespace: {err.strip() or line}")
        return cls(holder)

    def command(self, argv: list[str]) -> list[str]:
        """``argv`` prefixed so that it runs inside the namespace."""
        return ["nsenter", f"--net={self.path}", "--", *argv]

    @contextlib.contextmanager
    def entered(self) -> Iterator[None]:
        """Run the calling thread inside the namespace (sockets created now stay there);
        afterwards it returns to the namespace it was in (entries nest)."""
        previous = os.open(f"/proc/self/task/{threading.get_native_id()}/ns/net", os.O_RDONLY)
        try:
            _setns(self._fd)
            try:
                yield
            finally:
                _setns(previous)
        finally:
            os.close(previous)

    def interfaces(self) -> str:
        return subprocess.run(
            self.command(["ip", "-o", "addr"]), capture_output=True, text=True, check=True
        ).stdout

    def close(self) -> None:
        self.holder.kill()
        with contextlib.suppress(Exception):
            self.holder.wait(timeout=5)
        with contextlib.suppress(OSError):
            os.close(self._fd)


def inside(ns: NetNs | None) -> contextlib.AbstractContextManager[None]:
    return ns.entered() if ns is not None else contextlib.nullcontext()


def proc_net_listeners(pid: int) -> list[tuple[str, str, int]]:
    """(protocol, address, port) of every listening TCP / bound UDP socket the process
    holds, read from ``/proc/<pid>/net`` (the process's own namespace) and its fds."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    found: list[tuple[str, str, int]] = []
    for proto in ("tcp", "tcp6", "udp", "udp6"):
        table = Path(f"/proc/{pid}/net/{proto}")
        if not table.exists():
            continue
        for row in table.read_text().splitlines()[1:]:
            cols = row.split()
            local, state, inode = cols[1], cols[3], cols[9]
            if inode not in inodes or (proto.startswith("tcp") and state != "0A"):
                continue
            addr_hex, port_hex = local.split(":")
            found.append((proto, _decode_address(addr_hex), int(port_hex, 16)))
    return found


def _decode_address(addr_hex: str) -> str:
    import ipaddress

    raw = bytes.fromhex(addr_hex)
    if len(raw) == 4:
        return str(ipaddress.IPv4Address(raw[::-1]))
    words = [raw[i : i + 4][::-1] for i in range(0, 16, 4)]
    return str(ipaddress.IPv6Address(b"".join(words)))
