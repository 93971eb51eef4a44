"""Authenticated, bounded message streams between node processes, over gRPC.

A ``Transport`` is one endpoint (``"validator/3"``, ``"worker/17"``): it
listens on ``HOST:PORT`` and sends opaque ``bytes`` (already encoded and
signed by the protocol layer) to peers whose addresses it knows. Data flows
one way on a stream, from the dialer to the listener: an endpoint dials every
peer it sends to, over one long-lived gRPC bidirectional stream per peer,
with raw-bytes messages (generic handlers, no protoc code). One event loop
serves hundreds of endpoints: no thread per stream, one channel (with its own
TCP connection, ``grpc.use_local_subchannel_pool``) per dialled peer.

Authentication. The consensus layer trusts the sender id a transport hands
it, so that id must not be spoofable. When a stream opens the listener sends
a fresh 32-byte nonce from ``os.urandom``; the dialer answers with a hello
frame (``encode_hello``) naming itself and carrying ``sign(hello_message(
chain_id, nonce, dialer, listener))``; the listener delivers the stream's
later messages as from ``dialer`` only if ``verify(dialer, message,
signature)`` holds. Otherwise it counts ``dropped["bad hello"]`` and aborts
that stream with UNAUTHENTICATED. The nonce makes a recorded hello useless on
any other stream; the chain id and the listener id make a hello useless on
another chain or towards another listener.

What optional TLS (``tls=Tls(...)``) adds. Without it the bytes travel in
clear, and an on-path attacker who can rewrite TCP can hijack a stream after
its hello and inject messages under the dialer's name; they would still fail
the protocol's own signature checks, but the consensus layer would attribute
them to the dialer. TLS gives confidentiality and carries the whole stream
in one TLS session, which the dialer opened only to a listener whose
certificate its roots sign, so nothing can be injected after the hello. The
hello is not bound to the TLS session itself (gRPC Python exposes no keying
material exporter); that matters only once a listener's certificate key
leaks. Without TLS the listener is not authenticated to the dialer, which
costs nothing but confidentiality: every message is signed, and an impostor
listener can only drop what it gets.

Bounds and failures:

* Each peer's send queue holds at most ``Limits.queue_messages`` messages and
  ``Limits.queue_bytes`` bytes; past that a new message is dropped and counted
  ``dropped["queue full: <peer>"]``, so a slow or dead peer costs bounded memory.
* A message over ``Limits.max_message_bytes`` is refused by ``send``
  (``"oversized send"``) and by the receiver (``"oversized receive"``, the
  stream goes on). A message over that limit plus 64 KiB is refused by gRPC
  itself, which ends the stream; the receiver cannot tell that apart from a
  clean end and counts nothing.
* ``on_message`` raising is logged and counted (``"handler error"``); the
  stream goes on.
* An identity holds at most ``Limits.streams_per_peer`` incoming streams at
  once: one more closes its oldest (counted ``"stream limit: <peer>"``), so
  the holder of a key that opens streams without end costs the listener a
  bounded number of them and loses only its own older ones, while an honest
  dialer that redials before the listener noticed its old stream died keeps
  the new one. At most ``Limits.pending_handshakes`` streams wait for their
  hello at once; one more is refused at once (``"too many handshakes"``): an
  unauthenticated flood holds a bounded number of streams for at most
  ``handshake_timeout`` each.
* A broken stream is redialled with exponential backoff (``backoff_initial``
  doubling to ``backoff_max``, times a jitter in [0.5, 1) from a
  ``random.Random(seed)``), counted in ``stats.reconnects``. Queued messages
  stay queued across reconnects. A message stays at the head of the queue
  until gRPC accepts its write, but an accepted write is not a delivery: a
  message written just before the stream breaks may be lost, and one whose
  write failed halfway may arrive twice. The protocols above tolerate both.
* Without faults, messages from one sender to one receiver arrive in the
  order sent (up to such losses, which leave gaps, never reorderings).

Faults (``pot_jax.deploy.faults.FaultLayer``) are applied in ``send``, before
a message is queued: lost ones are counted ``dropped["fault: loss"]`` or
``dropped["fault: partition"]``, delayed ones are queued later by
``loop.call_later`` (and are not counted against the queue bound while they
wait), duplicated ones are queued twice.

Everything runs on one asyncio event loop: call ``send`` and ``add_peer`` from
that loop's thread; ``on_message`` is called on it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import struct
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import grpc
import grpc.aio

from .faults import FaultLayer

__all__ = [
    "HELLO_CONTEXT",
    "NONCE_BYTES",
    "HandshakeError",
    "Limits",
    "ListenError",
    "MalformedHello",
    "Tls",
    "Transport",
    "TransportStats",
    "decode_hello",
    "encode_hello",
    "hello_message",
]

log = logging.getLogger(__name__)

HELLO_CONTEXT = b"pot-jax/hello/v1\n"
NONCE_BYTES = 32
MAX_ID_BYTES = 256
SERVICE = "pot_jax.deploy.Transport"
METHOD_PATH = f"/{SERVICE}/Stream"
MiB = 1 << 20
# gRPC's own receive limit sits above ours, so that a message just over ours
# reaches the application check and is counted.
_GRPC_HEADROOM = 64 * 1024
# The dialer reads nothing but the nonce.
_DIALER_RECEIVE_LIMIT = 1024


@dataclass(frozen=True)
class Limits:
    """What one transport may hold or accept; times in seconds."""

    max_message_bytes: int = 8 * MiB
    queue_messages: int = 4096
    queue_bytes: int = 64 * MiB
    backoff_initial: float = 0.05
    backoff_max: float = 2.0
    # A listener waits this long for a hello, a dialer for the nonce.
    handshake_timeout: float = 10.0
    # HTTP/2 pings notice a peer that vanished without closing its connection.
    keepalive: float = 10.0
    # Incoming streams one authenticated identity may hold at once (its oldest is closed).
    streams_per_peer: int = 4
    # Incoming streams that may wait for their hello at once (a 1000-node cluster opens
    # about 1000 at the start on each validator: this bound sits above that).
    pending_handshakes: int = 4096


@dataclass
class TransportStats:
    """Counters since the transport was made; ``dropped`` is keyed by reason."""

    sent: int = 0
    received: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    reconnects: int = 0
    dropped: Counter[str] = field(default_factory=Counter)


@dataclass(frozen=True)
class Tls:
    """PEM bytes: this node's certificate chain and key, and the roots that sign every node's."""

    certificate_chain: bytes
    private_key: bytes
    root_certificates: bytes


class ListenError(OSError):
    """The listen address could not be bound."""


class MalformedHello(ValueError):
    """A hello frame that does not decode."""


class HandshakeError(Exception):
    """A listener that did not open the stream with a nonce."""


def _field(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def hello_message(chain_id: bytes, nonce: bytes, dialer: str, listener: str) -> bytes:
    """The bytes a dialer signs to open a stream.

    ``HELLO_CONTEXT || u32 len(chain_id) || chain_id || nonce (32 bytes) ||
    u32 len(dialer) || dialer || u32 len(listener) || listener``, ids in UTF-8,
    lengths big-endian: every field is fixed-size or length-prefixed, so no two
    distinct tuples give the same bytes.
    """
    if len(nonce) != NONCE_BYTES:
        raise ValueError(f"nonce has {len(nonce)} bytes, expected {NONCE_BYTES}")
    return (
        HELLO_CONTEXT
        + _field(chain_id)
        + nonce
        + _field(dialer.encode())
        + _field(listener.encode())
    )


def encode_hello(dialer: str, signature: bytes) -> bytes:
    """The hello frame: ``u16 len(dialer) || dialer (UTF-8) || u16 len(signature) || signature``."""
    dialer_bytes = dialer.encode()
    if not 0 < len(dialer_bytes) <= MAX_ID_BYTES:
        raise ValueError(
            f"endpoint id {dialer!r} has {len(dialer_bytes)} bytes; expected 1 to {MAX_ID_BYTES}"
        )
    if len(signature) > 0xFFFF:
        raise ValueError(f"signature has {len(signature)} bytes; at most 65535 fit a hello")
    return (
        struct.pack(">H", len(dialer_bytes))
        + dialer_bytes
        + struct.pack(">H", len(signature))
        + signature
    )


def decode_hello(frame: bytes) -> tuple[str, bytes]:
    """``(dialer, signature)`` from a hello frame; raises ``MalformedHello``."""
    try:
        (id_len,) = struct.unpack_from(">H", frame, 0)
        dialer_bytes = frame[2 : 2 + id_len]
        (sig_len,) = struct.unpack_from(">H", frame, 2 + id_len)
    except struct.error as e:
        raise MalformedHello(f"hello frame of {len(frame)} bytes is truncated") from e
    if not 0 < id_len <= MAX_ID_BYTES:
        raise MalformedHello(
            f"hello names an endpoint id of {id_len} bytes; expected 1 to {MAX_ID_BYTES}"
        )
    if len(frame) != 4 + id_len + sig_len:
        raise MalformedHello(
            f"hello frame has {len(frame)} bytes; its lengths say {4 + id_len + sig_len}"
        )
    try:
        dialer = dialer_bytes.decode()
    except UnicodeDecodeError as e:
        raise MalformedHello("hello's endpoint id is not UTF-8") from e
    return dialer, frame[4 + id_len :]


class _Link:
    """One peer's outgoing side: its bounded queue and the task that drains it into a stream."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.queue: deque[bytes] = deque()
        self.queued_bytes = 0
        self.wakeup = asyncio.Event()
        self.task: asyncio.Task | None = None


class Transport:
    """One endpoint's listener and its streams to the peers it sends to; see the module docstring.

    ``sign(message)`` signs with this endpoint's key; ``verify(endpoint,
    message, signature)`` checks a signature by ``endpoint`` and must return
    False for an endpoint it does not know (an exception there is a bug: it
    ends that stream, loudly). ``on_message(sender, data)`` gets every
    accepted message with its authenticated sender.
    """

    def __init__(
        self,
        me: str,
        listen: str | None,
        peers: Mapping[str, str],
        *,
        chain_id: bytes,
        sign: Callable[[bytes], bytes],
        verify: Callable[[str, bytes, bytes], bool],
        on_message: Callable[[str, bytes], None],
        limits: Limits = Limits(),
        faults: FaultLayer | None = None,
        seed: int = 0,
        tls: Tls | None = None,
        fault_as: str | None = None,
    ) -> None:
        self.me = me
        self.listen = listen
        self.chain_id = chain_id
        self.limits = limits
        self.faults = faults
        # Who this endpoint is to the fault layer: a hosted node's own streams are its
        # host's (a partition names hosts, and the host's link counters go on).
        self.fault_as = fault_as or me
        self.tls = tls
        self.stats = TransportStats()
        self.port: int | None = None
        self._sign = sign
        self._verify = verify
        self._on_message = on_message
        self._jitter = random.Random(seed)
        self._links = {peer: _Link(address) for peer, address in peers.items()}
        self._server: grpc.aio.Server | None = None
        self._incoming: dict[str, deque] = {}  # sender -> its open streams' tasks, oldest first
        self._handshakes = 0
        self._started = False
        self._stopped = False

    @property
    def address(self) -> str:
        """``HOST:PORT`` as bound (the real port when ``listen`` asked for port 0)."""
        if self.listen is None:
            raise RuntimeError(f"{self.me} only dials: it has no listener")
        if self.port is None:
            raise RuntimeError(f"{self.me} is not listening yet: call start()")
        return f"{self.listen.rsplit(':', 1)[0]}:{self.port}"

    async def start(self) -> None:
        """Binds the listener and starts draining whatever was sent before.

        With ``listen=None`` the endpoint only dials (a hosted training node: it sends its
        own submissions over its own streams and receives nothing)."""
        if self._started or self._stopped:
            raise RuntimeError(f"{self.me}: a transport starts once")
        if self.listen is not None:
            await self._listen()
        self._started = True
        for peer, link in self._links.items():
            if link.queue:
                self._start_link(peer, link)

    async def _listen(self) -> None:
        keepalive_ms = int(self.limits.keepalive * 1000)
        server = grpc.aio.server(
            options=[
                # gRPC lets a second server bind a taken port by default.
                ("grpc.so_reuseport", 0),
                ("grpc.max_receive_message_length", self.limits.max_message_bytes + _GRPC_HEADROOM),
                # Accept the dialers' keepalive pings (the default would answer them with GOAWAY).
                ("grpc.http2.min_recv_ping_interval_without_data_ms", keepalive_ms // 2),
                # ... and never close a connection for pings: with only the interval above, a
                # 1000-node run on 2 busy cores still saw ~80 GOAWAY "too_many_pings" (pings
                # bunch up when a process is starved), each dropping the messages in flight.
                ("grpc.http2.max_ping_strikes", 0),
                ("grpc.keepalive_permit_without_calls", 1),
            ]
        )
        handler = grpc.stream_stream_rpc_method_handler(self._serve)
        server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler(SERVICE, {"Stream": handler})]
        )
        try:
            if self.tls is None:
                self.port = server.add_insecure_port(self.listen)
            else:
                credentials = grpc.ssl_server_credentials(
                    [(self.tls.private_key, self.tls.certificate_chain)]
                )
                self.port = server.add_secure_port(self.listen, credentials)
        except RuntimeError as e:
            await server.stop(grace=None)  # else its finaliser schedules a stop on a closed loop
            raise ListenError(
                f"{self.me} cannot listen on {self.listen}: the port is taken or the address is not this machine's"
            ) from e
        await server.start()
        self._server = server

    async def stop(self) -> None:
        """Closes every stream and the listener; idempotent. Queued messages are discarded."""
        if self._stopped:
            return
        self._stopped = True
        tasks = [link.task for link in self._links.values() if link.task is not None]
        for task in tasks:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.stop(grace=None)
        for result in results:
            if not isinstance(result, asyncio.CancelledError) and isinstance(result, BaseException):
                raise result

    def add_peer(self, peer: str, address: str) -> None:
        """Adds a peer, or moves one (the new address is dialled from its next stream on)."""
        link = self._links.get(peer)
        if link is None:
            self._links[peer] = _Link(address)
        else:
            link.address = address

    def queued(self, peer: str) -> tuple[int, int]:
        """How many messages, and bytes, wait in ``peer``'s queue (delayed ones not yet included)."""
        link = self._links[peer]
        return len(link.queue), link.queued_bytes

    def discard(self, peer: str, stale: Callable[[bytes], bool]) -> int:
        """Drop the messages waiting for ``peer`` that ``stale(data)`` says are moot (a past
        round's submissions once a newer round started); the head, possibly being written,
        stays. Returns how many were dropped, also counted as ``dropped["stale"]``."""
        link = self._links[peer]
        if len(link.queue) < 2:
            return 0
        head, rest = link.queue[0], list(link.queue)[1:]
        kept = [d for d in rest if not stale(d)]
        dropped = len(rest) - len(kept)
        if dropped:
            link.queue = deque([head, *kept])
            link.queued_bytes = sum(len(d) for d in link.queue)
            self.stats.dropped["stale"] += dropped
        return dropped

    def send(self, peer: str, data: bytes) -> None:
        """Queues ``data`` for ``peer``, through the fault layer if there is one; never blocks."""
        if peer not in self._links:
            raise KeyError(f"{self.me} has no address for peer {peer!r}; add_peer first")
        if len(data) > self.limits.max_message_bytes:
            self.stats.dropped["oversized send"] += 1
            return
        if self.faults is None:
            self._enqueue(peer, data)
            return
        fate = self.faults.decide(self.fault_as, peer)
        if fate.dropped is not None:
            self.stats.dropped[f"fault: {fate.dropped}"] += 1
            return
        for delay in fate.delays:
            if delay > 0:
                asyncio.get_running_loop().call_later(delay, self._enqueue, peer, data)
            else:
                self._enqueue(peer, data)

    def _enqueue(self, peer: str, data: bytes) -> None:
        if self._stopped:
            self.stats.dropped["stopped"] += 1
            return
        link = self._links[peer]
        limits = self.limits
        if (
            len(link.queue) >= limits.queue_messages
            or link.queued_bytes + len(data) > limits.queue_bytes
        ):
            self.stats.dropped[f"queue full: {peer}"] += 1
            return
        link.queue.append(data)
        link.queued_bytes += len(data)
        link.wakeup.set()
        if link.task is None and self._started:
            self._start_link(peer, link)

    def _start_link(self, peer: str, link: _Link) -> None:
        link.task = asyncio.get_running_loop().create_task(
            self._drain(peer, link), name=f"pot-jax {self.me} -> {peer}"
        )

    # Dialer side.

    async def _drain(self, peer: str, link: _Link) -> None:
        """Keeps a stream to ``peer`` open while the transport runs, redialling with backoff."""
        loop = asyncio.get_running_loop()
        failures = 0
        while True:
            opened = loop.time()
            try:
                await self._stream_to(peer, link)
            except (
                grpc.aio.AioRpcError,
                asyncio.InvalidStateError,
                HandshakeError,
                TimeoutError,
            ) as e:
                log.debug("%s: stream to %s at %s ended: %s", self.me, peer, link.address, e)
            # gRPC can turn stop()'s cancellation into a CANCELLED status, caught above.
            if self._stopped:
                return
            if loop.time() - opened >= self.limits.backoff_max:
                failures = 0  # a stream that stayed up a while was a success
            backoff = min(self.limits.backoff_max, self.limits.backoff_initial * 2**failures)
            failures += 1
            await asyncio.sleep(backoff * self._jitter.uniform(0.5, 1.0))
            self.stats.reconnects += 1

    def _channel(self, address: str) -> grpc.aio.Channel:
        options = [
            # Each endpoint its own connection, even to a target another endpoint dials.
            ("grpc.use_local_subchannel_pool", 1),
            ("grpc.max_receive_message_length", _DIALER_RECEIVE_LIMIT),
            ("grpc.keepalive_time_ms", int(self.limits.keepalive * 1000)),
            ("grpc.keepalive_timeout_ms", int(self.limits.keepalive * 1000)),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.keepalive_permit_without_calls", 1),
        ]
        if self.tls is None:
            return grpc.aio.insecure_channel(address, options=options)
        credentials = grpc.ssl_channel_credentials(root_certificates=self.tls.root_certificates)
        return grpc.aio.secure_channel(address, credentials, options=options)

    async def _stream_to(self, peer: str, link: _Link) -> None:
        """One stream's life: nonce, hello, then the queue's messages until the stream ends.

        The channel lives as long as the stream, so the backoff between
        attempts is ``_drain``'s alone (gRPC's own reconnect backoff, which
        grows to two minutes, never comes into play).
        """
        channel = self._channel(link.address)
        try:
            call = channel.stream_stream(
                METHOD_PATH, request_serializer=None, response_deserializer=None
            )()
            # The listener writes nothing after the nonce, so the call is done only when the stream ends.
            call.add_done_callback(lambda _: link.wakeup.set())
            async with asyncio.timeout(self.limits.handshake_timeout):
                nonce = await call.read()
            if nonce is grpc.aio.EOF or len(nonce) != NONCE_BYTES:
                raise HandshakeError(
                    f"{peer} at {link.address} did not open with a {NONCE_BYTES}-byte nonce"
                )
            signature = self._sign(hello_message(self.chain_id, nonce, self.me, peer))
            await call.write(encode_hello(self.me, signature))
            while not call.done():
                if not link.queue:
                    link.wakeup.clear()
                    await link.wakeup.wait()
                    continue
                data = link.queue[0]
                await call.write(data)
                # Only this task takes from the queue, so its head is still `data`.
                link.queue.popleft()
                link.queued_bytes -= len(data)
                self.stats.sent += 1
                self.stats.bytes_sent += len(data)
            log.debug("%s: stream to %s ended: %s", self.me, peer, await call.code())
        finally:
            await channel.close()

    # Listener side.

    async def _serve(self, request_iterator, context: grpc.aio.ServicerContext) -> None:
        """One incoming stream: nonce, hello check, then deliver as from the authenticated dialer."""
        del request_iterator  # read through the context instead
        if self._handshakes >= self.limits.pending_handshakes:
            self.stats.dropped["too many handshakes"] += 1
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "too many pending handshakes")
        self._handshakes += 1
        try:
            nonce = os.urandom(NONCE_BYTES)
            await context.write(nonce)
            try:
                async with asyncio.timeout(self.limits.handshake_timeout):
                    hello = await context.read()
            except TimeoutError:
                self.stats.dropped["hello timeout"] += 1
                await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "no hello")
        finally:
            self._handshakes -= 1
        if hello is grpc.aio.EOF:
            return
        sender = self._authenticate(hello, nonce)
        if sender is None:
            self.stats.dropped["bad hello"] += 1
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED, "hello not signed by the endpoint it names"
            )
        streams = self._incoming.setdefault(sender, deque())
        streams.append(context)
        while len(streams) > self.limits.streams_per_peer:
            # Its oldest goes: an honest dialer that redialled keeps its newest stream.
            self.stats.dropped[f"stream limit: {sender}"] += 1
            await _end(streams.popleft(), f"more than {self.limits.streams_per_peer} streams")
        try:
            await self._receive(sender, context)
        finally:
            if context in streams:
                streams.remove(context)
            if not streams:
                self._incoming.pop(sender, None)

    async def _receive(self, sender: str, context) -> None:
        while (data := await context.read()) is not grpc.aio.EOF:
            if len(data) > self.limits.max_message_bytes:
                self.stats.dropped["oversized receive"] += 1
                continue
            self.stats.received += 1
            self.stats.bytes_received += len(data)
            try:
                self._on_message(sender, data)
            except Exception:
                log.exception("%s: on_message failed on a message from %s", self.me, sender)
                self.stats.dropped["handler error"] += 1

    def _authenticate(self, frame: bytes, nonce: bytes) -> str | None:
        """The dialer's id if the hello is its signature over this stream's nonce, else None."""
        try:
            dialer, signature = decode_hello(frame)
        except MalformedHello as e:
            log.info("%s: malformed hello: %s", self.me, e)
            return None
        if self._verify(dialer, hello_message(self.chain_id, nonce, dialer, self.me), signature):
            return dialer
        log.info("%s: hello claiming to be %s has a bad signature", self.me, dialer)
        return None


async def _end(context, why: str) -> None:
    """End another stream's RPC from outside its handler (its pending read then ends)."""
    try:
        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, why)
    except Exception:  # abort raises to its caller by design; the RPC is ended either way
        pass
