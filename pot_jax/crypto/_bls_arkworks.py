"""BLS12-381 group operations from py-arkworks-bls12381 (Rust): the fast backend.

The library gives curve points, scalars, hash_to_curve and a multi-pairing
check; the ciphersuite is composed from them in ``bls.py``. Its decoder is
lenient about the flag bits of the infinity encoding, which is why headers
are checked in ``_bls_encoding`` first.
"""

from collections.abc import Sequence

from py_arkworks_bls12381 import GT, G1Point, G2Point, Scalar

from ._bls_encoding import check_g1_encoding, check_g2_encoding, not_in_subgroup, not_on_curve
from .errors import CryptoError, DecodeError


class ArkworksBackend:
    """Group operations on arkworks G1Point / G2Point."""

    name = "arkworks"

    def __init__(self) -> None:
        self._g1 = G1Point()
        self._neg_g1 = -self._g1
        self._g1_identity = G1Point.identity()
        self._g2_identity = G2Point.identity()

    # Encoding.
    def g1_decode(self, data: bytes) -> G1Point:
        return _decode(data, check_g1_encoding, self._g1_identity, G1Point, "G1")

    def g2_decode(self, data: bytes) -> G2Point:
        return _decode(data, check_g2_encoding, self._g2_identity, G2Point, "G2")

    def g1_encode(self, point: G1Point) -> bytes:
        return point.to_compressed_bytes()

    def g2_encode(self, point: G2Point) -> bytes:
        return point.to_compressed_bytes()

    def g2_affine(self, point: G2Point) -> tuple[tuple[int, int], tuple[int, int]]:
        xy = point.to_xy_bytes_be()  # x.c0 | x.c1 | y.c0 | y.c1, 48 bytes each
        c = [int.from_bytes(xy[i : i + 48], "big") for i in range(0, 192, 48)]
        return (c[0], c[1]), (c[2], c[3])

    # Group arithmetic.
    def g1_is_identity(self, point: G1Point) -> bool:
        return point == self._g1_identity

    def g2_is_identity(self, point: G2Point) -> bool:
        return point == self._g2_identity

    def g1_generator_mul(self, scalar: int) -> G1Point:
        return self._g1 * Scalar(scalar)

    def g1_neg_generator(self) -> G1Point:
        return self._neg_g1

    def g1_mul(self, point: G1Point, scalar: int) -> G1Point:
        return point * Scalar(scalar)

    def g2_mul(self, point: G2Point, scalar: int) -> G2Point:
        return point * Scalar(scalar)

    def g1_msm(self, points: Sequence[G1Point], scalars: Sequence[int]) -> G1Point:
        return G1Point.multiexp_unchecked(list(points), _scalars(points, scalars))

    def g2_msm(self, points: Sequence[G2Point], scalars: Sequence[int]) -> G2Point:
        return G2Point.multiexp_unchecked(list(points), _scalars(points, scalars))

    def g1_sum(self, points: Sequence[G1Point]) -> G1Point:
        return sum(points, self._g1_identity)

    def g2_sum(self, points: Sequence[G2Point]) -> G2Point:
        return sum(points, self._g2_identity)

    def hash_to_g2(self, message: bytes, dst: bytes) -> G2Point:
        return G2Point.hash_to_curve(bytes(message), bytes(dst))

    def pairing_check(self, g1_points: Sequence[G1Point], g2_points: Sequence[G2Point]) -> bool:
        """True iff prod_i e(g1_i, g2_i) == 1 (one final exponentiation)."""
        return GT.pairing_check(list(g1_points), list(g2_points))


def _scalars(points: Sequence, scalars: Sequence[int]) -> list[Scalar]:
    # multiexp_unchecked zips its arguments (the shorter wins) and leaves subgroup
    # membership to the caller, whose points all came through _decode.
    if len(points) != len(scalars):
        raise CryptoError(
            f"multi-scalar multiplication of {len(points)} points by {len(scalars)} scalars"
        )
    return [Scalar(k) for k in scalars]


def _decode(data: bytes, check_encoding, identity, point_type, group: str):
    """Flag/length/x checks (shared with py_ecc), then decompress and subgroup-check."""
    if check_encoding(data):
        return identity
    try:
        point = point_type.from_compressed_bytes_unchecked(bytes(data))
    except ValueError as exc:
        raise DecodeError(not_on_curve(group)) from exc
    if not point.is_in_subgroup():
        raise DecodeError(not_in_subgroup(group))
    return point
