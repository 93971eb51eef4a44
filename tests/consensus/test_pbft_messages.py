"""Wire format of PBFT messages: exact round trips, and every bad input is MalformedMessage."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pot_jax.consensus.messages import (
    CHECKPOINT,
    COMMIT,
    MAX_BUNDLE_PARTS,
    PREPARE,
    Bundle,
    Cert,
    Decided,
    Fetch,
    MalformedMessage,
    NewView,
    PreparedProof,
    PrePrepare,
    ViewChange,
    Vote,
    bundle_parts,
    decode_message,
    encode_message,
    message_kind,
    message_seq,
    value_digest,
)
from pot_jax.crypto.quorum import QuorumCertificate

ints = st.integers(0, 2**63 - 1)
small = st.integers(0, 2**32 - 1)
digests = st.binary(min_size=32, max_size=32)
sigs = st.binary(min_size=96, max_size=96)
values = st.none() | st.binary(max_size=64)
qcs = st.builds(QuorumCertificate, sigs, st.binary(min_size=1, max_size=4))
kinds = st.sampled_from([PREPARE, COMMIT, CHECKPOINT])
certs = st.builds(Cert, kinds, ints, ints, digests, qcs)
preprepares = st.builds(PrePrepare, ints, ints, values, sigs)
view_changes = st.builds(
    ViewChange,
    ints,
    st.none() | st.builds(Cert, st.just(CHECKPOINT), ints, ints, digests, qcs),
    st.lists(st.builds(PreparedProof, ints, ints, values, qcs), max_size=3).map(tuple),
    small,
    sigs,
)
single_messages = st.one_of(
    preprepares,
    st.builds(Vote, kinds, ints, ints, digests, small, sigs),
    certs,
    view_changes,
    st.builds(
        NewView,
        ints,
        st.lists(view_changes, max_size=3).map(tuple),
        st.lists(preprepares, max_size=3).map(tuple),
    ),
    st.builds(Fetch, ints, st.booleans()),
    st.builds(Decided, ints, ints, values, qcs),
)
bundles = st.builds(
    Bundle, st.lists(single_messages.map(encode_message), min_size=1, max_size=4).map(tuple)
)
messages = single_messages | bundles


@given(messages)
def test_encoding_round_trips_exactly(m):
    data = encode_message(m)
    assert decode_message(data) == m
    assert message_kind(data) != "unknown"


@given(messages, st.data())
def test_truncated_or_extended_messages_are_malformed(m, data):
    raw = encode_message(m)
    cut = data.draw(st.integers(0, len(raw) - 1))
    for bad in (raw[:cut], raw + b"\x00"):
        try:
            decode_message(bad)
        except MalformedMessage:
            continue
        raise AssertionError(f"decoded {bad!r}, expected MalformedMessage")


@given(st.binary(max_size=300))
def test_random_bytes_decode_or_raise_malformed_only(data):
    try:
        m = decode_message(data)
    except MalformedMessage:
        return
    assert encode_message(m) == data


def test_null_and_empty_values_have_distinct_digests():
    assert value_digest(None) != value_digest(b"")
    assert len(value_digest(b"x")) == 32


# ---------------------------------------------------------------------------
# Bundles (piggybacking)


@given(st.lists(single_messages, min_size=1, max_size=5))
def test_a_bundle_carries_its_parts_in_order_and_the_carriers_sequence(parts):
    raw = tuple(encode_message(m) for m in parts)
    data = encode_message(Bundle(raw))
    assert message_kind(data) == "bundle"
    assert bundle_parts(data) == raw
    assert message_seq(data) == message_seq(raw[-1])
    assert bundle_parts(raw[0]) == (raw[0],)


def test_malformed_bundles_are_rejected_with_the_reason():
    vote = encode_message(Fetch(3))
    inner = encode_message(Bundle((vote,)))

    def raw(parts):  # the wire format, bypassing encode_message's own checks
        return (
            b"\x08"
            + len(parts).to_bytes(4, "big")
            + b"".join(len(p).to_bytes(4, "big") + p for p in parts)
        )

    cases = {
        "itself a bundle": raw([vote, inner]),
        "empty": raw([b""]),
        "expected 1..": raw([]),
        f"expected 1..{MAX_BUNDLE_PARTS}": raw([vote] * (MAX_BUNDLE_PARTS + 1)),
    }
    for reason, data in cases.items():
        with pytest.raises(MalformedMessage, match=reason):
            decode_message(data)
    with pytest.raises(MalformedMessage, match="itself a bundle"):
        encode_message(Bundle((vote, inner)))


def test_a_fetch_says_whether_it_asks_for_status_and_rejects_any_other_flag():
    """The status flag of a restarted replica's status request is one byte, 0 or 1."""
    asks = encode_message(Fetch(7, status=True))
    assert asks == b"\x06" + (7).to_bytes(8, "big") + b"\x01"
    assert decode_message(asks) == Fetch(7, True)
    assert decode_message(encode_message(Fetch(7))) == Fetch(7, False)
    cases = {
        "status flag of fetch is 2, expected 0 or 1": asks[:-1] + b"\x02",
        "truncated: status flag needs 1 bytes": asks[:-1],
        "fetch has 1 bytes of trailing garbage": asks + b"\x00",
        "from sequence is .* expected below 2\\*\\*63": b"\x06" + b"\xff" * 8 + b"\x00",
    }
    for reason, data in cases.items():
        with pytest.raises(MalformedMessage, match=reason):
            decode_message(data)


def test_message_seq_reads_the_header_of_each_kind():
    sig, d = b"\x00" * 96, b"\x11" * 32
    qc = QuorumCertificate(sig, b"\x01")
    assert message_seq(encode_message(PrePrepare(2, 9, b"v", sig))) == 9
    assert message_seq(encode_message(Vote(COMMIT, 2, 10, d, 1, sig))) == 10
    assert message_seq(encode_message(Cert(PREPARE, 2, 11, d, qc))) == 11
    assert message_seq(encode_message(Decided(12, 2, b"v", qc))) == 12
    assert message_seq(encode_message(Fetch(5))) is None
