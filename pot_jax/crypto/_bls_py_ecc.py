"""BLS12-381 group operations from py_ecc: the pure-Python reference backend.

Slow (a pairing check costs ~0.3 s) but independent of the Rust code in the
arkworks backend; the test suite holds the two to byte-identical outputs.
"""

from collections.abc import Sequence
from functools import reduce
from hashlib import sha256

from py_ecc.bls.g2_primitives import subgroup_check
from py_ecc.bls.hash_to_curve import hash_to_G2
from py_ecc.bls.point_compression import (
    compress_G1,
    compress_G2,
    decompress_G1,
    decompress_G2,
)
from py_ecc.fields import optimized_bls12_381_FQ12 as FQ12
from py_ecc.optimized_bls12_381 import (
    G1,
    Z1,
    Z2,
    add,
    final_exponentiate,
    is_inf,
    multiply,
    neg,
    normalize,
    pairing,
)

from ._bls_encoding import check_g1_encoding, check_g2_encoding, not_in_subgroup, not_on_curve
from .errors import CryptoError, DecodeError


class PyEccBackend:
    """Group operations on py_ecc's projective points."""

    name = "py_ecc"

    def __init__(self) -> None:
        self._neg_g1 = neg(G1)

    # Encoding.
    def g1_decode(self, data: bytes):
        if check_g1_encoding(data):
            return Z1
        try:
            point = decompress_G1(int.from_bytes(data, "big"))
        except ValueError as exc:
            raise DecodeError(not_on_curve("G1")) from exc
        if not subgroup_check(point):
            raise DecodeError(not_in_subgroup("G1"))
        return point

    def g2_decode(self, data: bytes):
        if check_g2_encoding(data):
            return Z2
        try:
            point = decompress_G2(
                (int.from_bytes(data[:48], "big"), int.from_bytes(data[48:], "big"))
            )
        except ValueError as exc:
            raise DecodeError(not_on_curve("G2")) from exc
        if not subgroup_check(point):
            raise DecodeError(not_in_subgroup("G2"))
        return point

    def g1_encode(self, point) -> bytes:
        return compress_G1(point).to_bytes(48, "big")

    def g2_encode(self, point) -> bytes:
        z1, z2 = compress_G2(point)
        return z1.to_bytes(48, "big") + z2.to_bytes(48, "big")

    def g2_affine(self, point) -> tuple[tuple[int, int], tuple[int, int]]:
        x, y = normalize(point)
        return (int(x.coeffs[0]), int(x.coeffs[1])), (int(y.coeffs[0]), int(y.coeffs[1]))

    # Group arithmetic.
    def g1_is_identity(self, point) -> bool:
        return is_inf(point)

    def g2_is_identity(self, point) -> bool:
        return is_inf(point)

    def g1_generator_mul(self, scalar: int):
        return multiply(G1, scalar)

    def g1_neg_generator(self):
        return self._neg_g1

    def g1_mul(self, point, scalar: int):
        return multiply(point, scalar)

    def g2_mul(self, point, scalar: int):
        return multiply(point, scalar)

    def g1_msm(self, points: Sequence, scalars: Sequence[int]):
        return reduce(add, _products(points, scalars), Z1)

    def g2_msm(self, points: Sequence, scalars: Sequence[int]):
        return reduce(add, _products(points, scalars), Z2)

    def g1_sum(self, points: Sequence):
        return reduce(add, points, Z1)

    def g2_sum(self, points: Sequence):
        return reduce(add, points, Z2)

    def hash_to_g2(self, message: bytes, dst: bytes):
        return hash_to_G2(message, dst, sha256)

    def pairing_check(self, g1_points: Sequence, g2_points: Sequence) -> bool:
        """True iff prod_i e(g1_i, g2_i) == 1 (one final exponentiation)."""
        acc = FQ12.one()
        for p, q in zip(g1_points, g2_points, strict=True):
            acc *= pairing(q, p, final_exponentiate=False)
        return final_exponentiate(acc) == FQ12.one()


def _products(points: Sequence, scalars: Sequence[int]) -> list:
    """scalars[i] * points[i], one by one: the reference the arkworks multiexp is tested against."""
    if len(points) != len(scalars):
        raise CryptoError(
            f"multi-scalar multiplication of {len(points)} points by {len(scalars)} scalars"
        )
    return [multiply(p, k) for p, k in zip(points, scalars, strict=True)]
