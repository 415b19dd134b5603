"""A kernel-level blackhole for the partition tests: a network namespace joined to this one by a
veth pair, in which per-connection routing rules drop packets in both directions.

Why: a proxy in user space can stop forwarding, but its kernel still acknowledges what the
client sends and answers its keepalive probes, so TCP keepalives and ``tcp_user_timeout`` can
never fire through it; only a client-side deadline notices. A real blackhole (a pulled cable, a
NAT or firewall that forgot the connection) drops the packets themselves: nothing is
acknowledged, keepalive probes go unanswered, and the client's kernel declares the connection
dead after its keepalive or user timeout. This module gives the partition proxy that: client
processes run inside the namespace (:attr:`Netns.prefix`: ``ip netns exec NAME``) and reach the
proxy at :attr:`Netns.host_address`; :meth:`Netns.drop` blackholes one client port both ways
(policy routing rules ``ipproto tcp sport/dport PORT blackhole`` inside the namespace, so
nothing outside it changes; no iptables, nft or tc needed, which this machine lacks).

Needs root and ``ip`` (iproute2 with port-matching rules, Linux 4.17+); :func:`unavailable`
says why not otherwise.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import os
import random
import shutil
import subprocess
from collections.abc import Iterator

_RULE_PRIORITY = "100"  # before the local table, which this module moves to 1000


def _ip(*args: str, namespace: str | None = None, check: bool = True) -> str:
    command = ["ip", *(["-n", namespace] if namespace else []), *args]
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=30)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)}: {done.stderr.strip() or done.returncode}")
    return done.stdout


@functools.cache
def unavailable() -> str | None:
    """None when namespaces with port-matching blackhole rules work here, else the reason."""
    if os.name != "posix" or not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is missing"
    try:
        with Netns.created():
            pass
    except (RuntimeError, OSError, subprocess.SubprocessError) as error:
        return f"network namespaces do not work here: {error}"
    return None


class Netns:
    """A namespace named ``pq<random>`` with a /30 link to this namespace."""

    def __init__(self) -> None:
        token = f"{random.getrandbits(32):08x}"
        self.name = f"pq{token}"
        self._outside = f"pq{token}a"
        self._inside = f"pq{token}b"
        subnet = self._free_subnet()
        self.host_address = str(subnet.network_address + 1)
        self.inside_address = str(subnet.network_address + 2)
        self._prefix_length = subnet.prefixlen
        self._dropped: set[int] = set()
        self._new_dropped: set[int] = set()

    @property
    def prefix(self) -> list[str]:
        """The command prefix that runs a program inside the namespace."""
        return ["ip", "netns", "exec", self.name]

    @staticmethod
    def _free_subnet() -> ipaddress.IPv4Network:
        taken = _ip("-o", "-4", "addr", "show")
        while True:
            block = random.randrange(1 << 14)
            subnet = ipaddress.ip_network(f"10.213.{block >> 6}.{(block & 63) << 2}/30")
            if f" {subnet.network_address + 1}/" not in taken:
                return subnet

    @classmethod
    @contextlib.contextmanager
    def created(cls) -> Iterator[Netns]:
        netns = cls()
        netns.create()
        try:
            yield netns
        finally:
            netns.remove()

    def create(self) -> None:
        _ip("netns", "add", self.name)
        try:
            _ip("link", "add", self._outside, "type", "veth", "peer", "name", self._inside)
            _ip("link", "set", self._inside, "netns", self.name)
            address = f"{self.host_address}/{self._prefix_length}"
            _ip("addr", "add", address, "dev", self._outside)
            _ip("link", "set", self._outside, "up")
            inside = f"{self.inside_address}/{self._prefix_length}"
            _ip("addr", "add", inside, "dev", self._inside, namespace=self.name)
            _ip("link", "set", self._inside, "up", namespace=self.name)
            _ip("link", "set", "lo", "up", namespace=self.name)
            # Incoming packets are routed through the local table, consulted first (priority
            # 0): move it behind the blackhole rules so they see packets to this side too.
            _ip("rule", "add", "priority", "1000", "lookup", "local", namespace=self.name)
            _ip("rule", "del", "priority", "0", namespace=self.name)
            # Prove that port-matching rules work before anyone relies on them.
            self._rule("add", "sport", 1)
            self._rule("del", "sport", 1)
        except BaseException:
            self.remove()
            raise

    def _rule(self, action: str, direction: str, port: int) -> None:
        spec = ["priority", _RULE_PRIORITY, "ipproto", "tcp", direction, str(port), "blackhole"]
        _ip("rule", action, *spec, namespace=self.name)

    def drop(self, port: int) -> None:
        """Blackhole the connection whose client (inside) uses ``port``, both ways."""
        if port not in self._dropped:
            self._rule("add", "sport", port)  # what the client sends
            self._rule("add", "dport", port)  # what reaches it
            self._dropped.add(port)

    def undrop(self, port: int) -> None:
        if port in self._dropped:
            self._rule("del", "sport", port)
            self._rule("del", "dport", port)
            self._dropped.discard(port)

    def drop_new(self, server_port: int) -> None:
        """Blackhole everything ``server_port`` sends into the namespace, so that new
        connections hang in their handshake (their SYN arrives, the answer never does: a
        blackholed SYN would fail ``connect()`` at once with EINVAL instead)."""
        if server_port not in self._new_dropped:
            self._rule("add", "sport", server_port)
            self._new_dropped.add(server_port)

    def undrop_new(self, server_port: int) -> None:
        if server_port in self._new_dropped:
            self._rule("del", "sport", server_port)
            self._new_dropped.discard(server_port)

    def remove(self) -> None:
        """Delete the link and the namespace (processes still inside keep it alive, unnamed)."""
        _ip("link", "del", self._outside, check=False)
        _ip("netns", "del", self.name, check=False)
