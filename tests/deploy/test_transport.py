"""Transports on loopback: delivery and order, authentication, bounds, reconnection, faults.

Every test runs its own event loop (``asyncio.run``) with endpoints on
127.0.0.1 that bind port 0, so tests never collide on ports.
"""

import asyncio
import datetime
import ipaddress
import socket
import threading
import time

import grpc
import grpc.aio
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID

from pot_jax.deploy.faults import FaultLayer, FaultSchedule
from pot_jax.deploy.transport import (
    METHOD_PATH,
    NONCE_BYTES,
    Limits,
    ListenError,
    MalformedHello,
    Tls,
    Transport,
    decode_hello,
    encode_hello,
    hello_message,
)

CHAIN = b"test-chain"
ANY_PORT = "127.0.0.1:0"


class Keys:
    """An Ed25519 key per endpoint id: what the protocol's identities would provide."""

    def __init__(self) -> None:
        self.secret: dict[str, Ed25519PrivateKey] = {}

    def sign_as(self, endpoint: str):
        key = self.secret.setdefault(endpoint, Ed25519PrivateKey.generate())
        return key.sign

    def verify(self, endpoint: str, message: bytes, signature: bytes) -> bool:
        key = self.secret.get(endpoint)
        if key is None:
            return False
        try:
            key.public_key().verify(signature, message)
        except Exception:  # cryptography's InvalidSignature
            return False
        return True


class Node:
    """A transport and everything it delivered, in order."""

    def __init__(self, keys: Keys, me: str, listen: str = ANY_PORT, **kwargs) -> None:
        self.inbox: list[tuple[str, bytes]] = []
        kwargs.setdefault("verify", keys.verify)
        kwargs.setdefault("on_message", lambda sender, data: self.inbox.append((sender, data)))
        self.transport = Transport(me, listen, {}, chain_id=CHAIN, sign=keys.sign_as(me), **kwargs)

    def messages_from(self, sender: str) -> list[bytes]:
        return [data for s, data in self.inbox if s == sender]


async def until(condition, timeout: float = 10.0) -> None:
    """Waits until ``condition()`` holds; fails the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.01)


async def started(*nodes: Node) -> None:
    """Starts every node and tells each the others' addresses."""
    for node in nodes:
        await node.transport.start()
    for a in nodes:
        for b in nodes:
            if a is not b:
                a.transport.add_peer(b.transport.me, b.transport.address)


async def stopped(*nodes: Node) -> None:
    for node in nodes:
        await node.transport.stop()


def run(scenario, timeout: float = 30.0):
    return asyncio.run(asyncio.wait_for(scenario, timeout))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def raw_stream(address: str):
    """A client that speaks the wire format by hand, bypassing ``Transport.send``'s checks."""
    channel = grpc.aio.insecure_channel(address)
    call = channel.stream_stream(METHOD_PATH, request_serializer=None, response_deserializer=None)()
    nonce = await call.read()
    assert len(nonce) == NONCE_BYTES
    return channel, call, nonce


# Delivery and order.


def test_two_endpoints_deliver_in_order_with_authenticated_sender():
    async def scenario():
        keys = Keys()
        a, b = Node(keys, "validator/0"), Node(keys, "validator/1")
        await started(a, b)
        for i in range(200):
            a.transport.send("validator/1", b"a%d" % i)
            b.transport.send("validator/0", b"b%d" % i)
        await until(lambda: len(a.inbox) == 200 and len(b.inbox) == 200)
        assert b.inbox == [("validator/0", b"a%d" % i) for i in range(200)]
        assert a.inbox == [("validator/1", b"b%d" % i) for i in range(200)]
        assert a.transport.stats.sent == 200 and a.transport.stats.received == 200
        assert a.transport.stats.bytes_sent == sum(len(b"a%d" % i) for i in range(200))
        assert not a.transport.stats.dropped and a.transport.stats.reconnects == 0
        await stopped(a, b)

    run(scenario())


def test_fifty_endpoints_deliver_every_message_in_order():
    """46 workers send to 4 validators, the validators to everyone: 380 streams, one loop."""

    async def scenario():
        keys = Keys()
        validators = [Node(keys, f"validator/{i}") for i in range(4)]
        workers = [Node(keys, f"worker/{i}") for i in range(46)]
        nodes = validators + workers
        await started(*nodes)
        for node in nodes:
            for peer in validators if node in workers else nodes:
                if peer is not node:
                    for k in range(10):
                        node.transport.send(peer.transport.me, f"{node.transport.me}:{k}".encode())
        await until(lambda: all(len(v.inbox) == 49 * 10 for v in validators))
        await until(lambda: all(len(w.inbox) == 4 * 10 for w in workers))
        for node in nodes:
            for sender in {s for s, _ in node.inbox}:
                assert node.messages_from(sender) == [f"{sender}:{k}".encode() for k in range(10)]
        await stopped(*nodes)

    run(scenario())


# Authentication.


def _spoof_scenario(verify_for_listener=None):
    """An evil endpoint dials as "validator/1" but signs with its own key."""

    async def scenario():
        keys = Keys()
        kwargs = {} if verify_for_listener is None else {"verify": verify_for_listener}
        listener = Node(keys, "validator/0", **kwargs)
        honest = Node(keys, "validator/2")
        await started(listener, honest)
        keys.sign_as("validator/1")  # the real validator/1 has a key
        evil = Transport(
            "validator/1",
            ANY_PORT,
            {"validator/0": listener.transport.address},
            chain_id=CHAIN,
            sign=Keys().sign_as("validator/1"),  # ... but not this one
            verify=keys.verify,
            on_message=lambda *_: None,
        )
        await evil.start()
        evil.send("validator/0", b"forged vote")
        honest.transport.send("validator/0", b"honest vote")
        await until(lambda: listener.messages_from("validator/2") == [b"honest vote"])
        await until(
            lambda: (
                listener.transport.stats.dropped["bad hello"]
                or listener.messages_from("validator/1")
            )
        )
        inbox, dropped = list(listener.inbox), listener.transport.stats.dropped.copy()
        await evil.stop()
        await stopped(listener, honest)
        return inbox, dropped

    return run(scenario())


def test_hello_signed_with_another_key_is_refused_and_honest_peers_still_served():
    inbox, dropped = _spoof_scenario()
    assert ("validator/1", b"forged vote") not in inbox
    assert ("validator/2", b"honest vote") in inbox
    assert dropped["bad hello"] >= 1


def test_canary_without_hello_verification_the_spoof_is_delivered():
    """The check above can fail: a listener that believes every hello delivers the forgery."""
    inbox, dropped = _spoof_scenario(verify_for_listener=lambda *_: True)
    assert ("validator/1", b"forged vote") in inbox
    assert dropped["bad hello"] == 0


def test_replayed_hello_and_malformed_hello_are_refused():
    """A hello signed for one stream's nonce is useless on another; garbage is refused."""

    async def scenario():
        keys = Keys()
        listener = Node(keys, "validator/0")
        await started(listener)
        sign = keys.sign_as("worker/1")
        channel, call, nonce = await raw_stream(listener.transport.address)
        hello = encode_hello(
            "worker/1", sign(hello_message(CHAIN, nonce, "worker/1", "validator/0"))
        )
        await call.write(hello)
        await call.write(b"first")
        await until(lambda: listener.inbox == [("worker/1", b"first")])
        replay_channel, replay, _ = await raw_stream(listener.transport.address)
        await replay.write(hello)
        assert await replay.code() == grpc.StatusCode.UNAUTHENTICATED
        garbage_channel, garbage, _ = await raw_stream(listener.transport.address)
        await garbage.write(b"\xff\xff not a hello")
        assert await garbage.code() == grpc.StatusCode.UNAUTHENTICATED
        await call.write(b"second")  # the authenticated stream is unaffected
        await until(lambda: len(listener.inbox) == 2)
        assert listener.inbox == [("worker/1", b"first"), ("worker/1", b"second")]
        assert listener.transport.stats.dropped["bad hello"] == 2
        for c in (channel, replay_channel, garbage_channel):
            await c.close()
        await stopped(listener)

    run(scenario())


def test_hello_frame_round_trips_and_bad_frames_raise():
    frame = encode_hello("worker/17", b"s" * 96)
    assert decode_hello(frame) == ("worker/17", b"s" * 96)
    for bad in [
        b"",
        b"\x00",
        frame[:-1],
        frame + b"x",
        b"\x00\x00\x00\x00",
        b"\x00\x01\xff\x00\x00",
    ]:
        with pytest.raises(MalformedHello):
            decode_hello(bad)
    # Length prefixes keep (chain, dialer, listener) unambiguous.
    nonce = bytes(NONCE_BYTES)
    assert hello_message(b"c", nonce, "ab", "c") != hello_message(b"c", nonce, "a", "bc")


# Bounds.


def test_oversized_message_is_refused_at_send_and_at_the_receiver():
    async def scenario():
        keys = Keys()
        limits = Limits(max_message_bytes=1000)
        a, b = Node(keys, "worker/0", limits=limits), Node(keys, "validator/0", limits=limits)
        await started(a, b)
        a.transport.send("validator/0", b"x" * 1001)
        a.transport.send("validator/0", b"x" * 1000)
        await until(lambda: len(b.inbox) == 1)
        assert a.transport.stats.dropped["oversized send"] == 1
        # A client that skips send's check: just over the limit is counted, the stream goes on.
        sign = keys.sign_as("worker/1")
        channel, call, nonce = await raw_stream(b.transport.address)
        await call.write(
            encode_hello("worker/1", sign(hello_message(CHAIN, nonce, "worker/1", "validator/0")))
        )
        await call.write(b"y" * 1001)
        await call.write(b"after")
        await until(lambda: b.messages_from("worker/1") == [b"after"])
        assert b.transport.stats.dropped["oversized receive"] == 1
        # Far over the limit: gRPC itself refuses it and ends that stream.
        await call.write(b"z" * 200_000)
        assert await call.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        await channel.close()
        # The node keeps running.
        a.transport.send("validator/0", b"still up")
        await until(lambda: b.messages_from("worker/0")[-1:] == [b"still up"])
        await stopped(a, b)

    run(scenario())


def test_queue_to_a_down_peer_is_bounded_and_delivered_once_it_comes_up():
    """Sends past the bound are dropped and counted; the sender redials with backoff."""

    async def scenario():
        keys = Keys()
        port = free_port()
        limits = Limits(queue_messages=100, queue_bytes=10_000)
        sender = Node(keys, "worker/0", limits=limits)
        await started(sender)
        sender.transport.add_peer("validator/0", f"127.0.0.1:{port}")
        for i in range(130):
            sender.transport.send("validator/0", b"%03d" % i)
        assert sender.transport.stats.dropped["queue full: validator/0"] == 30
        sender.transport.send("validator/0", b"q" * 10_000)  # within the count, over the bytes
        assert sender.transport.stats.dropped["queue full: validator/0"] == 31
        await until(lambda: sender.transport.stats.reconnects >= 3)
        receiver = Node(keys, "validator/0", listen=f"127.0.0.1:{port}")
        await receiver.transport.start()
        await until(lambda: len(receiver.inbox) == 100)
        assert receiver.messages_from("worker/0") == [b"%03d" % i for i in range(100)]
        await stopped(sender, receiver)

    run(scenario())


def test_handler_error_is_counted_and_the_stream_goes_on():
    async def scenario():
        keys = Keys()
        seen = []

        def on_message(sender, data):
            if data == b"poison":
                raise RuntimeError("handler bug")
            seen.append(data)

        a, b = Node(keys, "worker/0"), Node(keys, "validator/0", on_message=on_message)
        await started(a, b)
        for data in (b"1", b"poison", b"2"):
            a.transport.send("validator/0", data)
        await until(lambda: seen == [b"1", b"2"])
        assert b.transport.stats.dropped["handler error"] == 1
        await stopped(a, b)

    run(scenario())


def test_two_hundred_workers_each_dialling_four_validators_share_one_loop():
    """1600 streams (workers to validators and back) on one event loop, no thread per stream."""

    async def scenario():
        keys = Keys()
        validators = [Node(keys, f"validator/{i}") for i in range(4)]
        workers = [Node(keys, f"worker/{i}") for i in range(200)]
        threads = threading.active_count()
        for node in validators + workers:
            await node.transport.start()
        for w in workers:
            for v in validators:
                w.transport.add_peer(v.transport.me, v.transport.address)
                v.transport.add_peer(w.transport.me, w.transport.address)
        for w in workers:
            for v in validators:
                for k in range(5):
                    w.transport.send(v.transport.me, b"%d" % k)
                v.transport.send(w.transport.me, b"ack")
        await until(lambda: all(len(v.inbox) == 5 * 200 for v in validators), 60)
        await until(lambda: all(len(w.inbox) == 4 for w in workers), 60)
        assert threading.active_count() <= threads + 4  # gRPC's own few, not one per stream
        for v in validators:
            assert all(
                v.messages_from(w.transport.me) == [b"%d" % k for k in range(5)] for w in workers
            )
        await stopped(*validators, *workers)

    run(scenario(), timeout=90)


def _self_signed_tls() -> Tls:
    """A certificate for 127.0.0.1 that is its own root (every test node shares it)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pot-jax test")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    pem = certificate.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return Tls(certificate_chain=pem, private_key=key_pem, root_certificates=pem)


def test_tls_streams_deliver_and_a_plaintext_dialer_is_refused():
    async def scenario():
        keys = Keys()
        tls = _self_signed_tls()
        a, b = Node(keys, "worker/0", tls=tls), Node(keys, "validator/0", tls=tls)
        await started(a, b)
        for i in range(10):
            a.transport.send("validator/0", b"%d" % i)
        await until(lambda: len(b.inbox) == 10)
        assert b.messages_from("worker/0") == [b"%d" % i for i in range(10)]
        plain = Node(keys, "worker/1")
        await started(plain)
        plain.transport.add_peer("validator/0", b.transport.address)
        plain.transport.send("validator/0", b"in clear")
        await until(lambda: plain.transport.stats.reconnects >= 2)
        assert not b.messages_from("worker/1")
        await stopped(a, b, plain)

    run(scenario())


# Lifecycle and reconnection.


def test_peer_restart_on_the_same_port_is_redialled():
    async def scenario():
        keys = Keys()
        a, b = Node(keys, "worker/0"), Node(keys, "validator/0")
        await started(a, b)
        a.transport.send("validator/0", b"before")
        await until(lambda: b.inbox == [("worker/0", b"before")])
        address = b.transport.address
        await b.transport.stop()
        b2 = Node(keys, "validator/0", listen=address)
        await b2.transport.start()
        await until(lambda: a.transport.stats.reconnects >= 1)
        for i in range(5):
            a.transport.send("validator/0", b"after%d" % i)
        await until(lambda: len(b2.inbox) == 5)
        assert b2.messages_from("worker/0") == [b"after%d" % i for i in range(5)]
        await stopped(a, b2)

    run(scenario())


def test_listening_on_a_taken_port_names_the_address():
    async def scenario():
        keys = Keys()
        a = Node(keys, "validator/0")
        await started(a)
        b = Node(keys, "validator/1", listen=a.transport.address)
        with pytest.raises(ListenError, match=a.transport.address):
            await b.transport.start()
        await stopped(a, b)
        await a.transport.stop()  # idempotent

    run(scenario())


def test_send_to_an_unknown_peer_is_a_bug():
    transport = Transport(
        "a", ANY_PORT, {}, chain_id=CHAIN, sign=bytes, verify=bool, on_message=print
    )
    with pytest.raises(KeyError, match="validator/9"):
        transport.send("validator/9", b"x")


# Faults through real streams.


def _through_faults(schedule: dict, n: int = 200, seed: int = 0):
    """What ``n`` messages sent through the fault layer deliver (no delay: all are queued at once)."""

    async def scenario():
        keys = Keys()
        faults = FaultLayer(FaultSchedule.from_dict(schedule), seed=seed)
        a, b = Node(keys, "worker/0", faults=faults), Node(keys, "validator/0")
        await started(a, b)
        for i in range(n):
            a.transport.send("validator/0", b"%d" % i)
        await until(lambda: a.transport.queued("validator/0") == (0, 0))
        await until(lambda: len(b.inbox) == a.transport.stats.sent)
        inbox, dropped = [data for _, data in b.inbox], a.transport.stats.dropped.copy()
        await stopped(a, b)
        return inbox, dropped

    return run(scenario())


def test_loss_one_delivers_nothing():
    inbox, dropped = _through_faults({"loss": 1.0})
    assert inbox == [] and dropped["fault: loss"] == 200


def test_loss_with_a_fixed_seed_delivers_a_deterministic_plausible_count():
    first, dropped = _through_faults({"loss": 0.3}, seed=11)
    second, _ = _through_faults({"loss": 0.3}, seed=11)
    assert first == second
    assert 110 < len(first) < 170  # mean 140, sd 6.5
    assert dropped["fault: loss"] == 200 - len(first)
    assert first == sorted(first, key=int)  # loss leaves gaps, never reorders


def test_duplicate_one_delivers_every_message_twice():
    inbox, _ = _through_faults({"duplicate": 1.0}, n=50)
    assert inbox == [b"%d" % (i // 2) for i in range(100)]


def test_constant_delay_holds_messages_back():
    async def scenario():
        keys = Keys()
        faults = FaultLayer(FaultSchedule(delay=0.3))
        a, b = Node(keys, "worker/0", faults=faults), Node(keys, "validator/0")
        await started(a, b)
        sent = time.monotonic()
        a.transport.send("validator/0", b"late")
        await until(lambda: b.inbox)
        waited = time.monotonic() - sent
        await stopped(a, b)
        return waited

    assert run(scenario()) >= 0.3


def test_partition_window_drops_then_heals():
    async def scenario():
        keys = Keys()
        schedule = FaultSchedule.from_dict(
            {"partitions": [{"start": 0.0, "end": 0.5, "groups": [["worker/0"], ["validator/0"]]}]}
        )
        a = Node(keys, "worker/0", faults=FaultLayer(schedule))
        b = Node(keys, "validator/0")
        await started(a, b)
        a.transport.send("validator/0", b"during")
        await asyncio.sleep(0.6)
        a.transport.send("validator/0", b"after")
        await until(lambda: b.inbox)
        await asyncio.sleep(0.1)
        inbox, dropped = list(b.inbox), a.transport.stats.dropped.copy()
        await stopped(a, b)
        return inbox, dropped

    inbox, dropped = run(scenario())
    assert inbox == [("worker/0", b"after")]
    assert dropped["fault: partition"] == 1


def test_discard_drops_stale_queued_messages_but_not_the_head_being_written():
    async def scenario():
        keys = Keys()
        node = Node(keys, "workers/0")
        node.transport.add_peer("validator/0", "127.0.0.1:9")  # nobody listens: all queue up
        await node.transport.start()
        for i in range(6):
            node.transport.send("validator/0", bytes([i % 2]) + b"x" * 10)
        n, size = node.transport.queued("validator/0")
        dropped = node.transport.discard("validator/0", lambda d: d[0] == 0)
        after = node.transport.queued("validator/0")
        await node.transport.stop()
        return n, size, dropped, after, node.transport.stats.dropped["stale"]

    n, size, dropped, after, counted = asyncio.run(scenario())
    assert n == 6 and size == 66
    assert dropped == 2 and counted == 2  # the three stale ones but the head
    assert after == (4, 44)


def test_a_dial_only_endpoint_sends_under_its_own_name_and_faults_as_its_host():
    """A hosted training node's own streams: no listener, its own hello key, and the fault
    layer treats it as its host (a partition that names the host cuts it off too)."""

    async def scenario():
        keys = Keys()
        v = Node(keys, "validator/0")
        await started(v)
        schedule = FaultSchedule.from_dict(
            {"partitions": [{"start": 0.0, "end": 0.5, "groups": [["workers/0"], ["validator/0"]]}]}
        )
        node = Node(
            keys, "worker/3", listen=None, faults=FaultLayer(schedule), fault_as="workers/0"
        )
        node.transport.add_peer("validator/0", v.transport.address)
        await node.transport.start()
        with pytest.raises(RuntimeError, match="only dials"):
            _ = node.transport.address
        node.transport.send("validator/0", b"during")
        await asyncio.sleep(0.6)
        node.transport.send("validator/0", b"after")
        await until(lambda: v.inbox)
        dropped = node.transport.stats.dropped.copy()
        await stopped(node, v)
        return list(v.inbox), dropped

    inbox, dropped = run(scenario())
    assert inbox == [("worker/3", b"after")]  # authenticated under the node's own name
    assert dropped["fault: partition"] == 1


def test_an_identity_holds_a_bounded_number_of_streams_its_oldest_closed_first():
    """A key holder that opens streams without end (each hello fresh and valid) costs the
    listener at most ``streams_per_peer`` of them; its newest keep delivering."""

    async def scenario():
        keys = Keys()
        listener = Node(keys, "validator/0", limits=Limits(streams_per_peer=2))
        await started(listener)
        sign = keys.sign_as("worker/1")
        opened = []
        for k in range(4):
            channel, call, nonce = await raw_stream(listener.transport.address)
            hello = sign(hello_message(CHAIN, nonce, "worker/1", "validator/0"))
            await call.write(encode_hello("worker/1", hello))
            await call.write(b"stream %d" % k)
            opened.append((channel, call))
            await until(lambda k=k: len(listener.inbox) == k + 1)
        assert listener.transport.stats.dropped["stream limit: worker/1"] == 2
        assert len(listener.transport._incoming["worker/1"]) == 2
        for _channel, call in opened[:2]:  # the two oldest were closed by the listener
            assert await call.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        await opened[3][1].write(b"still here")
        await until(lambda: listener.inbox[-1] == ("worker/1", b"still here"))
        for channel, _ in opened:
            await channel.close()
        await stopped(listener)

    run(scenario())


def test_streams_waiting_for_a_hello_are_bounded():
    async def scenario():
        keys = Keys()
        listener = Node(keys, "validator/0", limits=Limits(pending_handshakes=2))
        await started(listener)
        waiting = [await raw_stream(listener.transport.address) for _ in range(2)]
        channel = grpc.aio.insecure_channel(listener.transport.address)
        call = channel.stream_stream(
            METHOD_PATH, request_serializer=None, response_deserializer=None
        )()
        assert await call.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert listener.transport.stats.dropped["too many handshakes"] == 1
        # Once one of them says hello, a new stream is taken again.
        sign = keys.sign_as("worker/1")
        ch, first, nonce = waiting[0]
        await first.write(
            encode_hello("worker/1", sign(hello_message(CHAIN, nonce, "worker/1", "validator/0")))
        )
        await first.write(b"hello")
        await until(lambda: listener.inbox == [("worker/1", b"hello")])
        more_channel, more, _ = await raw_stream(listener.transport.address)
        for c in (channel, more_channel, *[w[0] for w in waiting]):
            await c.close()
        await stopped(listener)

    run(scenario())
