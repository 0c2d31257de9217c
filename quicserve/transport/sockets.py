"""Listening sockets from bind strings.

Theory of operation
-------------------
``config.parse_bind`` turns ``--bind`` / ``--insecure-bind`` / ``--quic-bind``
strings into :class:`~quicserve.config.BindSpec` values (pure); this module
opens what they describe and nothing else:

* TCP ``host:port`` / ``[v6]:port``: ``SO_REUSEADDR`` (a restarted server can
  bind while old connections sit in TIME_WAIT), ``IPV6_V6ONLY`` on IPv6 so
  ``[::]:443`` and ``0.0.0.0:443`` can be bound side by side, then ``listen``.
* ``unix:PATH``: a stale socket file (nobody accepts on it) is removed first;
  a live one is "address already in use".  The file is made connectable by
  other users (0o666, like a TCP port) and removed again by :func:`close`.
* ``fd://N``: a socket inherited from a process manager (systemd, circus) is
  adopted as it is; it must be of the right type (stream for TCP, datagram for
  QUIC).
* UDP ``host:port``: ``SO_REUSEADDR``, ``IPV6_V6ONLY``, and large kernel buffers
  (``batch.size_buffers``), because a QUIC server that drops datagrams in the
  kernel loses throughput to retransmissions.

Every socket is returned non-blocking.  Every failure is a :class:`BindError`
whose message is one line naming the bind as the user wrote it, e.g.
``cannot bind 127.0.0.1:8443 (TCP): address already in use``.

The supervisor (``--workers``) opens the UDP sockets of a steered reuseport
group itself (``transport/steering.py``); everything else comes from here.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from dataclasses import dataclass
from typing import Any, Literal, Union

from ..config import BindSpec
from ..errors import QuicserveError
from .batch import size_buffers

Kind = Literal["tcp", "udp"]
#: What a socket is bound to: (host, port) for inet, the path for unix.
BoundAddress = Union[tuple[str, int], str]

_UNIX_MODE = 0o666


class BindError(QuicserveError):
    """A listening socket could not be opened.  The message is one line."""


@dataclass(frozen=True, slots=True)
class BoundSocket:
    """An open listening socket and the bind string it came from."""

    spec: BindSpec
    kind: Kind
    sock: socket.socket
    #: True when this process created a unix socket file it must remove.
    owns_path: bool = False

    @property
    def address(self) -> BoundAddress:
        """The address actually bound (the real port when port 0 was asked)."""
        return sock_address(self.sock)

    @property
    def family(self) -> socket.AddressFamily:
        return self.sock.family


def sock_address(sock: socket.socket) -> BoundAddress:
    name = sock.getsockname()
    if isinstance(name, (str, bytes)):
        return name.decode() if isinstance(name, bytes) else name
    return (str(name[0]), int(name[1]))


def open_tcp(spec: BindSpec, *, backlog: int) -> BoundSocket:
    """A listening TCP (or unix stream) socket for ``spec``.

    Error handling: :class:`BindError` naming the bind.

    Resource handling: the caller owns the socket; :func:`close` releases it
    (and removes a unix socket file this call created).  On error nothing is
    left open.
    """
    if spec.kind == "fd":
        return BoundSocket(spec, "tcp", _adopt(spec, socket.SOCK_STREAM, backlog=backlog))
    if spec.kind == "unix":
        return BoundSocket(spec, "tcp", _open_unix(spec, backlog=backlog), owns_path=True)
    family, address = _resolve(spec, socket.SOCK_STREAM, "TCP")
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        _bind(sock, address, spec, "TCP")
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return BoundSocket(spec, "tcp", sock)


def open_udp(spec: BindSpec) -> BoundSocket:
    """A UDP socket for one ``--quic-bind`` (single worker).

    Error handling: :class:`BindError` naming the bind.

    Resource handling: the caller owns the socket; :func:`close` releases it.
    """
    if spec.kind == "fd":
        sock = _adopt(spec, socket.SOCK_DGRAM, backlog=None)
        size_buffers(sock)
        return BoundSocket(spec, "udp", sock)
    if spec.kind != "inet":
        raise BindError(f"cannot bind {spec} (UDP): QUIC needs host:port")
    family, address = _resolve(spec, socket.SOCK_DGRAM, "UDP")
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        _bind(sock, address, spec, "UDP")
        size_buffers(sock)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return BoundSocket(spec, "udp", sock)


def close(bound: BoundSocket) -> None:
    """Close the socket; remove the unix socket file this process created."""
    path = bound.spec.path if bound.owns_path else None
    bound.sock.close()
    if path:
        try:
            if stat.S_ISSOCK(os.lstat(path).st_mode):
                os.unlink(path)
        except OSError:
            pass  # already gone, or replaced by something that is not ours


# --------------------------------------------------------------------------


def _resolve(spec: BindSpec, kind: socket.SocketKind,
             label: str) -> tuple[socket.AddressFamily, tuple[Any, ...]]:
    try:
        infos = socket.getaddrinfo(spec.host, spec.port, type=kind, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise BindError(f"cannot bind {spec} ({label}): {exc.strerror}") from None
    family, _, _, _, address = infos[0]
    return family, address


def _bind(sock: socket.socket, address: tuple[Any, ...] | str, spec: BindSpec,
          label: str) -> None:
    try:
        sock.bind(address)
    except OSError as exc:
        raise BindError(f"cannot bind {spec} ({label}): {_reason(exc)}") from None


def _reason(exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return "address already in use"
    if exc.errno == errno.EACCES:
        return "permission denied (ports below 1024 need privileges)"
    if exc.errno == errno.EADDRNOTAVAIL:
        return "address not available on this host"
    return (exc.strerror or str(exc)).lower()


def _open_unix(spec: BindSpec, *, backlog: int) -> socket.socket:
    _remove_stale(spec)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        _bind(sock, spec.path, spec, "unix")
    except BaseException:
        sock.close()
        raise
    try:
        os.chmod(spec.path, _UNIX_MODE)
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError as exc:
        close(BoundSocket(spec, "tcp", sock, owns_path=True))
        raise BindError(f"cannot bind {spec}: {_reason(exc)}") from None
    return sock


def _remove_stale(spec: BindSpec) -> None:
    """Remove a socket file nobody listens on; refuse a live one or a non-socket."""
    try:
        mode = os.lstat(spec.path).st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise BindError(f"cannot bind {spec}: {_reason(exc)}") from None
    if not stat.S_ISSOCK(mode):
        raise BindError(f"cannot bind {spec}: the path exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(spec.path)
    except OSError:
        os.unlink(spec.path)  # refused: a stale file from a server that died
        return
    finally:
        probe.close()
    raise BindError(f"cannot bind {spec}: address already in use")


def _adopt(spec: BindSpec, kind: socket.SocketKind, *, backlog: int | None) -> socket.socket:
    try:
        sock = socket.socket(fileno=spec.fd)
    except OSError as exc:
        raise BindError(f"cannot use {spec}: {_reason(exc)}") from None
    if sock.type != kind:
        wanted = "stream (TCP)" if kind == socket.SOCK_STREAM else "datagram (UDP)"
        sock.detach()  # not ours to close
        raise BindError(f"cannot use {spec}: not a {wanted} socket")
    if backlog is not None and not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        sock.listen(backlog)
    sock.setblocking(False)
    return sock
