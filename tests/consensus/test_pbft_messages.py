"""Wire format of PBFT messages: exact round trips, and every bad input is MalformedMessage."""

from hypothesis import given
from hypothesis import strategies as st

from pot_jax.consensus.messages import (
    CHECKPOINT,
    COMMIT,
    PREPARE,
    Cert,
    Decided,
    Fetch,
    MalformedMessage,
    NewView,
    PreparedProof,
    PrePrepare,
    ViewChange,
    Vote,
    decode_message,
    encode_message,
    message_kind,
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
messages = st.one_of(
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
    st.builds(Fetch, ints),
    st.builds(Decided, ints, ints, values, qcs),
)


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
