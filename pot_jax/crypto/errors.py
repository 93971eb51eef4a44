"""Typed errors of the crypto package.

Decoding functions raise these; verification functions return booleans and
never raise them for bad signatures or keys.
"""


class CryptoError(ValueError):
    """Base class: a cryptographic input was rejected."""


class DecodeError(CryptoError):
    """Bytes are not a valid encoding.

    Wrong length, wrong flag bits, a coordinate >= p, a point not on the curve
    or not in the prime-order subgroup, the point at infinity where it is
    forbidden, or a truncated / oversized / trailing-garbage message encoding.
    """


class InvalidKeyError(CryptoError):
    """A secret key (or key material) is out of range: zero, >= r, or too short."""
