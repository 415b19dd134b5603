"""A TCP proxy between test clients and PostgreSQL that partitions them on demand.

``cut()`` stops forwarding in both directions and closes nothing: the proxy neither reads nor
writes the connections any more, so what either side sends waits in kernel buffers, as it would
in retransmission queues while a cable is unplugged. ``heal(alive=True)`` resumes forwarding on
the same connections (everything sent meanwhile arrives, in order). ``heal(alive=False)``
forgets the cut connections: the client side is never read, written or closed again (no FIN, no
RST: open and dead, as after a NAT or firewall dropped their state), the server side is closed
(the server notices, as its own keepalives eventually would, and frees the backend and its
locks), and new connections work. ``cut()`` also holds new connections: they are accepted but
never connected upstream, so a client's startup waits (until its ``connect_timeout``, if it has
one); either heal lets them through, as a SYN retransmitted after a real partition completes
its handshake. ``cut_matching(predicate)`` cuts only the live connections it selects, new ones
stay open.

Identifying a connection: each :class:`Link` keeps the first bytes the client sent. Its startup
packet (after an SSLRequest, answered "N" locally) gives ``application_name``, ``user`` and
``database``; :meth:`Link.saw` finds a statement in what followed (the LISTEN connection is the
one that sent ``LISTEN``, whatever its application_name); ``index`` is the order of arrival and
``client_port`` the client's local port.

In user space this is a partial blackhole: the proxy's kernel still acknowledges what clients
send and answers their keepalive probes, so TCP keepalives and ``tcp_user_timeout`` never fire
through it; only a client-side deadline notices. With a :class:`netns.Netns` (root on Linux) the
clients run in a network namespace and each cut connection is also blackholed in the kernel,
both ways, so keepalives and the user timeout do fire, as on a real network.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from netns import Netns
from sqlalchemy.engine import URL

HEAD_LIMIT = 64 * 1024  # bytes of each client's stream kept for identification
BUFFER_LIMIT = 256 * 1024  # per direction: past this the proxy stops reading that side
_PROTOCOL_3 = 196608
_SSL_REQUEST = 80877103
_GSSENC_REQUEST = 80877104
_CANCEL_REQUEST = 80877102

Address = tuple[str, int] | str  # TCP (host, port) or the path of a Unix socket


def upstream_address(url: URL) -> Address:
    """Where ``url``'s server listens: its TCP host and port, or the Unix socket file in the
    folder of its ``?host=`` (the embedded server's way)."""
    if url.host:
        return (url.host, url.port or 5432)
    folder = url.query.get("host")
    if not isinstance(folder, str):
        raise ValueError(f"{url} names neither a host nor a socket folder")
    if url.port:
        return f"{folder}/.s.PGSQL.{url.port}"
    found = sorted(p for p in Path(folder).glob(".s.PGSQL.*") if p.suffix != ".lock")
    if not found:
        raise ValueError(f"no PostgreSQL socket in {folder}")
    return str(found[0])


def startup_parameters(head: bytes) -> dict[str, str] | None:
    """The parameters of the startup packet at the start of ``head`` (skipping SSL and GSS
    encryption requests); ``{}`` for a cancel request or an encrypted stream, None while
    incomplete."""
    offset = 0
    while len(head) >= offset + 8:
        length = int.from_bytes(head[offset : offset + 4], "big")
        code = int.from_bytes(head[offset + 4 : offset + 8], "big")
        if code in (_SSL_REQUEST, _GSSENC_REQUEST) and length == 8:
            offset += 8
            continue
        if code != _PROTOCOL_3:
            return {"cancel": "1"} if code == _CANCEL_REQUEST else {}
        if len(head) < offset + length:
            return None
        fields = bytes(head[offset + 8 : offset + length]).split(b"\0")
        pairs = zip(fields[0::2], fields[1::2], strict=False)
        return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in pairs if k}
    return None


@dataclass(eq=False)
class Link:
    """One client connection through the proxy."""

    index: int
    client: socket.socket
    client_port: int
    opened_at: float = field(default_factory=time.monotonic)
    upstream: socket.socket | None = None
    state: str = "open"  # open | cut | dead | closed
    head: bytearray = field(default_factory=bytearray)
    parameters: dict[str, str] | None = None
    to_upstream: bytearray = field(default_factory=bytearray)
    to_client: bytearray = field(default_factory=bytearray)

    @property
    def application_name(self) -> str | None:
        return (self.parameters or {}).get("application_name")

    def saw(self, text: bytes) -> bool:
        """Did the client send ``text`` (within its first ``HEAD_LIMIT`` bytes)?"""
        return text in self.head

    @property
    def listens(self) -> bool:
        """Is this a LISTEN connection (it sent a LISTEN statement)?"""
        return self.saw(b"LISTEN ")

    def _sniff(self, data: bytes) -> None:
        if len(self.head) < HEAD_LIMIT:
            self.head += data[: HEAD_LIMIT - len(self.head)]
            if self.parameters is None:
                self.parameters = startup_parameters(self.head)

    def __repr__(self) -> str:
        return (
            f"Link(#{self.index} port {self.client_port} {self.state} "
            f"app={self.application_name!r} listens={self.listens})"
        )


class PartitionProxy:
    """Forward ``host:port`` (port 0: any free one) to ``upstream``; see the module docstring."""

    def __init__(
        self, upstream: Address, *, host: str = "127.0.0.1", port: int = 0, netns: Netns | None
    ) -> None:
        self.upstream = upstream
        self.netns = netns
        self._listener = socket.create_server((host, port), backlog=128)
        self._listener.setblocking(False)
        self.host, self.port = self._listener.getsockname()[:2]
        self._waker, self._wakee = socket.socketpair()
        self._wakee.setblocking(False)
        self._lock = threading.Condition()
        self._links: list[Link] = []
        self._holding_new = False
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="partition-proxy", daemon=True)
        self._thread.start()

    @classmethod
    @contextlib.contextmanager
    def running(cls, upstream: Address, netns: Netns | None = None) -> Iterator[PartitionProxy]:
        """A proxy on loopback, or on the host side of ``netns`` for clients inside it."""
        host = netns.host_address if netns is not None else "127.0.0.1"
        proxy = cls(upstream, host=host, netns=netns)
        try:
            yield proxy
        finally:
            proxy.close()

    def url(self, url: URL) -> URL:
        """``url`` with the proxy as its server."""
        query = {k: v for k, v in url.query.items() if k != "host"}
        return url.set(host=self.host, port=self.port, query=query)

    @property
    def links(self) -> list[Link]:
        with self._lock:
            return list(self._links)

    def wait_for(self, predicate: Callable[[Link], bool], timeout: float) -> Link:
        """The first link matching ``predicate``, waiting up to ``timeout`` seconds for it."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                for link in self._links:
                    if predicate(link):
                        return link
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no proxied connection matched within {timeout} s")
                self._lock.wait(left)

    # --- partitions ----------------------------------------------------------------------------

    def cut(self) -> list[Link]:
        """Stop forwarding on every live connection, and hold new ones, until :meth:`heal`."""
        with self._lock:
            self._holding_new = True
            if self.netns is not None:
                self.netns.drop_new(self.port)
        return self.cut_matching(lambda link: True)

    def cut_matching(self, predicate: Callable[[Link], bool]) -> list[Link]:
        """Stop forwarding on the live connections ``predicate`` selects; which ones."""
        with self._lock:
            chosen = [link for link in self._links if link.state == "open" and predicate(link)]
            for link in chosen:
                link.state = "cut"
                if self.netns is not None:
                    self.netns.drop(link.client_port)
        self._wake()
        return chosen

    def heal(self, *, alive: bool = True) -> list[Link]:
        """End the partition: cut connections resume (``alive``) or are forgotten, dead (not
        those held before reaching the server: they go through); new connections are forwarded
        again. Which connections were cut or held."""
        with self._lock:
            self._holding_new = False
            cut = [link for link in self._links if link.state == "cut"]
            for link in cut:
                if alive or link.upstream is None:  # held in its handshake: it goes through
                    if self.netns is not None:
                        self.netns.undrop(link.client_port)
                    self._open(link)
                else:
                    link.state = "dead"  # the client side stays open, silent, never closed
                    if link.upstream is not None:
                        link.upstream.close()
                        link.upstream = None
            if self.netns is not None:
                self.netns.undrop_new(self.port)
        self._wake()
        return cut

    def close(self) -> None:
        """Stop the proxy and close every socket it holds (dead ones too)."""
        with self._lock:
            self._closing = True
        self._wake()
        self._thread.join(10)
        with self._lock:
            for link in self._links:
                self._close(link)
                with contextlib.suppress(OSError):
                    link.client.close()
        for sock in (self._listener, self._waker, self._wakee):
            sock.close()

    # --- the forwarding thread -----------------------------------------------------------------

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._waker.send(b"x")

    def _open(self, link: Link) -> None:
        """Forward ``link`` (connecting upstream if it never was); closed if that fails."""
        if link.upstream is None:
            family = socket.AF_UNIX if isinstance(self.upstream, str) else socket.AF_INET
            upstream = socket.socket(family, socket.SOCK_STREAM)
            try:
                upstream.settimeout(5)
                upstream.connect(self.upstream)
            except OSError:
                upstream.close()
                self._close(link)
                return
            upstream.setblocking(False)
            link.upstream = upstream
        link.state = "open"

    def _close(self, link: Link) -> None:
        """Close both sides of a link (not a dead one's client side: it is never closed)."""
        if link.upstream is not None:
            link.upstream.close()
            link.upstream = None
        if link.state != "dead":
            with contextlib.suppress(OSError):
                link.client.close()
            link.state = "closed"

    def _run(self) -> None:
        while True:
            with self._lock:
                if self._closing:
                    return
                readers: list[socket.socket] = [self._listener, self._wakee]
                writers: list[socket.socket] = []
                for link in self._links:
                    if link.state != "open" or link.upstream is None:
                        continue
                    if len(link.to_upstream) < BUFFER_LIMIT:
                        readers.append(link.client)
                    if len(link.to_client) < BUFFER_LIMIT:
                        readers.append(link.upstream)
                    if link.to_upstream:
                        writers.append(link.upstream)
                    if link.to_client:
                        writers.append(link.client)
            readable, writable, _ = select.select(readers, writers, [], 1.0)
            with self._lock:
                if self._wakee in readable:
                    with contextlib.suppress(BlockingIOError):
                        self._wakee.recv(4096)
                if self._listener in readable:
                    self._accept()
                for link in list(self._links):
                    if link.state == "open" and link.upstream is not None:
                        self._pump(link, readable, writable)
                self._lock.notify_all()

    def _accept(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while True:
                client, peer = self._listener.accept()
                client.setblocking(False)
                link = Link(len(self._links), client, peer[1])
                self._links.append(link)
                if self._holding_new:
                    link.state = "cut"
                    if self.netns is not None:
                        self.netns.drop(link.client_port)
                else:
                    self._open(link)

    def _pump(
        self, link: Link, readable: list[socket.socket], writable: list[socket.socket]
    ) -> None:
        """Move bytes one step each way; a side that ends or fails closes the link (after
        handing on what it had sent)."""
        assert link.upstream is not None
        try:
            if link.client in readable:
                data = link.client.recv(65536)
                if not data:
                    raise EOFError
                link._sniff(data)
                link.to_upstream += data
            if link.upstream in readable:
                data = link.upstream.recv(65536)
                if not data:
                    raise EOFError
                link.to_client += data
            if link.upstream in writable and link.to_upstream:
                del link.to_upstream[: link.upstream.send(link.to_upstream)]
            if link.client in writable and link.to_client:
                del link.to_client[: link.client.send(link.to_client)]
        except BlockingIOError:
            pass  # a full buffer after all: the next round
        except (EOFError, OSError):
            for sock, pending in ((link.upstream, link.to_upstream), (link.client, link.to_client)):
                with contextlib.suppress(OSError):
                    sock.send(pending)
            self._close(link)
