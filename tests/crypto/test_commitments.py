"""Tests for pot_jax.crypto.commitments."""

import hashlib

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pot_jax.crypto.commitments import COMMITMENT_SIZE, commit, commit_buffers


def test_commit_is_plain_sha256():
    """No domain prefix: a commitment is what a stock SHA-256 gives."""
    assert commit(b"") == hashlib.sha256(b"").digest()
    assert commit(b"abc").hex() == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )  # FIPS 180-2 example
    assert len(commit(b"gradient")) == COMMITMENT_SIZE == 32


@given(st.lists(st.binary(max_size=200), max_size=8))
def test_commit_buffers_equals_commit_of_concatenation(buffers):
    """Hashing buffer by buffer gives the commitment of their concatenation."""
    assert commit_buffers(buffers) == commit(b"".join(buffers))
    assert commit_buffers(iter(buffers)) == commit(b"".join(buffers))


def test_commit_buffers_accepts_memoryviews_of_arrays():
    """Array bytes can be hashed in place, without a copy into one bytes object."""
    grads_P = np.arange(1000, dtype="<f4")
    header = b"leaf:w:float32:(1000,)"
    expected = commit(header + grads_P.tobytes())
    assert commit_buffers([header, memoryview(grads_P).cast("B")]) == expected
    assert commit_buffers([bytearray(header), grads_P.data]) == expected


def test_commit_buffers_rejects_text_naming_the_buffer():
    with pytest.raises(TypeError, match="buffer 1 is a str"):
        commit_buffers([b"ok", "not bytes"])


def test_commitments_bind_order_and_content():
    """Different encodings, including reordered buffers, commit differently."""
    assert commit_buffers([b"a", b"b"]) != commit_buffers([b"b", b"a"])
    assert commit(b"\x00") != commit(b"")
