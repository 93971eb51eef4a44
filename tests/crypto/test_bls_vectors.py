"""Both BLS backends against external vectors: Ethereum's BLS tests and RFC 9380.

Vectors are read from ``../shared/test-vectors`` next to the repository (or
$POT_JAX_TEST_VECTORS). A missing directory is a collection error, never a
skip. Each (vector, backend) pair is its own test id.

The written argument this checks: proofs/qc-unforgeability.md.
"""

import hashlib
import json
import os
from pathlib import Path

import pytest
from py_ecc.bls.hash import expand_message_xmd as py_ecc_expand_message_xmd

from pot_jax.crypto import bls
from pot_jax.crypto.errors import CryptoError, DecodeError


def _vector_root() -> Path:
    override = os.environ.get("POT_JAX_TEST_VECTORS")
    root = (
        Path(override)
        if override
        else Path(__file__).resolve().parents[2].parent / "shared" / "test-vectors"
    )
    if not (root / "bls-ethereum").is_dir() or not (root / "hash-to-curve").is_dir():
        raise FileNotFoundError(
            f"BLS test vectors not found under {root} (expected bls-ethereum/ and "
            "hash-to-curve/); set POT_JAX_TEST_VECTORS to the test-vectors directory"
        )
    return root


ROOT = _vector_root()
ETH = ROOT / "bls-ethereum"
H2C = ROOT / "hash-to-curve"

EXPECTED_CASES = {
    "aggregate": 6,
    "aggregate_verify": 5,
    "batch_verify": 4,
    "deserialization_G1": 16,
    "deserialization_G2": 18,
    "fast_aggregate_verify": 12,
    "hash_to_G2": 4,
    "sign": 10,
    "verify": 29,
}
RFC_DST = b"QUUX-V01-CS02-with-BLS12381G2_XMD:SHA-256_SSWU_RO_"


def _eth_cases() -> list:
    cases = []
    for handler in sorted(EXPECTED_CASES):
        for path in sorted((ETH / handler).glob("*.json")):
            cases.append(pytest.param(handler, path, id=f"{handler}/{path.stem}"))
    return cases


ETH_CASES = _eth_cases()


@pytest.fixture(params=bls.BACKENDS)
def backend(request):
    with bls.use_backend(request.param) as active:
        yield active


def _hex(s: str) -> bytes:
    assert s.startswith("0x"), s
    return bytes.fromhex(s[2:])


def _fp2(text: str) -> tuple[int, int]:
    c0, c1 = (int(part, 16) for part in text.split(","))
    return c0, c1


def test_vector_directory_holds_every_ethereum_case():
    counts = {h: len(list((ETH / h).glob("*.json"))) for h in EXPECTED_CASES}
    assert counts == EXPECTED_CASES
    assert sum(counts.values()) == 104 == len(ETH_CASES)


def _run_eth_case(handler: str, data: dict, backend) -> None:
    inp, out = data["input"], data["output"]
    if handler == "sign":
        sk = int(inp["privkey"], 16)
        if out is None:
            with pytest.raises(CryptoError):
                bls.Sign(sk, _hex(inp["message"]))
        else:
            assert bls.Sign(sk, _hex(inp["message"])) == _hex(out)
    elif handler == "verify":
        got = bls.Verify(_hex(inp["pubkey"]), _hex(inp["message"]), _hex(inp["signature"]))
        assert got is out
    elif handler == "aggregate":
        signatures = [_hex(s) for s in inp]
        if out is None:
            with pytest.raises(CryptoError):
                bls.Aggregate(signatures)
        else:
            assert bls.Aggregate(signatures) == _hex(out)
    elif handler == "fast_aggregate_verify":
        pks = [_hex(p) for p in inp["pubkeys"]]
        got = bls.FastAggregateVerify(pks, _hex(inp["message"]), _hex(inp["signature"]))
        assert got is out
    elif handler == "aggregate_verify":
        pks = [_hex(p) for p in inp["pubkeys"]]
        msgs = [_hex(m) for m in inp["messages"]]
        assert bls.AggregateVerify(pks, msgs, _hex(inp["signature"])) is out
    elif handler == "batch_verify":
        pks = [_hex(p) for p in inp["pubkeys"]]
        msgs = [_hex(m) for m in inp["messages"]]
        sigs = [_hex(s) for s in inp["signatures"]]
        assert bls.batch_verify(pks, msgs, sigs) is out
    elif handler == "hash_to_G2":
        point = backend.hash_to_g2(inp["msg"].encode(), RFC_DST)
        assert backend.g2_affine(point) == (_fp2(out["x"]), _fp2(out["y"]))
    elif handler in ("deserialization_G1", "deserialization_G2"):
        decode = bls.decode_g1 if handler.endswith("G1") else bls.decode_g2
        data_bytes = _hex(inp["pubkey"] if handler.endswith("G1") else inp["signature"])
        if out:
            point = decode(data_bytes)
            encode = backend.g1_encode if handler.endswith("G1") else backend.g2_encode
            assert encode(point) == data_bytes
        else:
            with pytest.raises(DecodeError):
                decode(data_bytes)
    else:
        raise AssertionError(f"no runner for handler {handler}")


@pytest.mark.parametrize(("handler", "path"), ETH_CASES)
def test_ethereum_bls_vector(handler, path, backend):
    _run_eth_case(handler, json.loads(path.read_text()), backend)


# RFC 9380 hash_to_curve, BLS12381G2_XMD:SHA-256_SSWU_RO_.

_H2C_SUITE = json.loads((H2C / "BLS12381G2_XMD_SHA-256_SSWU_RO_.json").read_text())
_H2C_CASES = [
    pytest.param(v, id=f"msg{len(v['msg'])}-{i}") for i, v in enumerate(_H2C_SUITE["vectors"])
]


def test_rfc9380_suite_is_the_ciphersuites_hash():
    assert _H2C_SUITE["ciphersuite"] == "BLS12381G2_XMD:SHA-256_SSWU_RO_"
    assert bls.CIPHERSUITE_DST.endswith(b"BLS12381G2_XMD:SHA-256_SSWU_RO_POP_")
    assert len(_H2C_CASES) == 5


@pytest.mark.parametrize("vector", _H2C_CASES)
def test_rfc9380_hash_to_g2(vector, backend):
    point = backend.hash_to_g2(vector["msg"].encode(), _H2C_SUITE["dst"].encode())
    assert backend.g2_affine(point) == (_fp2(vector["P"]["x"]), _fp2(vector["P"]["y"]))


# RFC 9380 expand_message_xmd with SHA-256. Neither backend exposes it through
# the BLSBackend interface (arkworks does not at all), so pot-jax's pure-Python
# implementation is checked on every vector and py_ecc's on the short-DST file.

_XMD_CASES = []
for _file in sorted(H2C.glob("expand_message_xmd_SHA256_*.json")):
    _suite = json.loads(_file.read_text())
    for _i, _t in enumerate(_suite["tests"]):
        _dst = _suite["DST"].encode()
        _id = f"{_file.stem}-{_i}-len{int(_t['len_in_bytes'], 16)}"
        _XMD_CASES.append(pytest.param("pot_jax", _dst, _t, id=f"pot_jax-{_id}"))
        if len(_dst) <= 255:
            _XMD_CASES.append(pytest.param("py_ecc", _dst, _t, id=f"py_ecc-{_id}"))


def test_expand_message_xmd_vector_files_present():
    implementations = [p.values[0] for p in _XMD_CASES]
    assert implementations.count("pot_jax") >= 10
    assert implementations.count("py_ecc") >= 5


@pytest.mark.parametrize(("implementation", "dst", "case"), _XMD_CASES)
def test_rfc9380_expand_message_xmd(implementation, dst, case):
    msg, length = case["msg"].encode(), int(case["len_in_bytes"], 16)
    if implementation == "pot_jax":
        got = bls.expand_message_xmd(msg, dst, length)
    else:
        got = py_ecc_expand_message_xmd(msg, dst, length, hashlib.sha256)
    assert got.hex() == case["uniform_bytes"]


def test_py_ecc_expand_message_xmd_rejects_oversized_dst_that_pot_jax_hashes():
    """Why py_ecc is not run on the 256-byte-DST file: it refuses instead of hashing the DST."""
    with pytest.raises(ValueError, match="DST"):
        py_ecc_expand_message_xmd(b"", b"D" * 256, 32, hashlib.sha256)
    assert len(bls.expand_message_xmd(b"", b"D" * 256, 32)) == 32
