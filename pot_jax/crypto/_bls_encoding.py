"""BLS12-381 constants and the compressed point format shared by every backend.

The flag bits are those of the ZCash serialization used by the IETF BLS draft
(draft-irtf-cfrg-bls-signature, appendix "BLS12-381 serialization"): in the
first byte, bit 7 is the compression flag (must be 1), bit 6 the infinity flag,
bit 5 the sign of y. Backends differ in which malformed headers they accept
(arkworks takes an infinity encoding with stray x bits), so the header is
checked here, once, before any backend sees the bytes; backends only
decompress (on-curve check) and check the subgroup.
"""

from .errors import DecodeError

FIELD_MODULUS = int(
    "1a0111ea397fe69a4b1ba7b6434bacd764774b84f38512bf6730d2a0f6b0f6241eabfffeb153ffffb9feffffffffaaab",
    16,
)
CURVE_ORDER = int("73eda753299d7d483339d80809a1d80553bda402fffe5bfeffffffff00000001", 16)

G1_COMPRESSED_SIZE = 48
G2_COMPRESSED_SIZE = 96

_COMPRESSION_FLAG = 0x80
_INFINITY_FLAG = 0x40
_SIGN_FLAG = 0x20
_X_MASK = (1 << 381) - 1


def _check_fp(x: int, group: str, what: str) -> None:
    if x >= FIELD_MODULUS:
        raise DecodeError(
            f"{group} point: {what} = {x:#x} is >= the field modulus p; expected x < p"
        )


def _check_header(data: bytes, size: int, group: str) -> bool:
    """Check length and flags; return True for the (canonical) infinity encoding."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"{group} point must be bytes, got {type(data).__name__}")
    if len(data) != size:
        raise DecodeError(f"{group} point must be {size} bytes (compressed), got {len(data)}")
    first = data[0]
    if not first & _COMPRESSION_FLAG:
        raise DecodeError(
            f"{group} point: compression flag (bit 7 of byte 0) is 0; "
            "only compressed encodings are accepted"
        )
    rest_is_zero = (first & 0x1F) == 0 and not any(data[1:])
    if first & _INFINITY_FLAG:
        if first & _SIGN_FLAG or not rest_is_zero:
            raise DecodeError(
                f"{group} point: infinity flag is set, so the sign flag and every "
                "coordinate bit must be 0"
            )
        return True
    if rest_is_zero:
        raise DecodeError(
            f"{group} point: x is 0 but the infinity flag is not set; "
            "the point at infinity is encoded 0xc0 followed by zero bytes"
        )
    return False


def check_g1_encoding(data: bytes) -> bool:
    """Validate a 48-byte compressed G1 header and x < p; return True for infinity."""
    if _check_header(data, G1_COMPRESSED_SIZE, "G1"):
        return True
    _check_fp(int.from_bytes(data, "big") & _X_MASK, "G1", "x")
    return False


def check_g2_encoding(data: bytes) -> bool:
    """Validate a 96-byte compressed G2 header and both x coordinates < p.

    The first 48 bytes carry the flags and x.c1 (imaginary part), the last 48
    bytes x.c0 (real part) with no flags.
    """
    if _check_header(data, G2_COMPRESSED_SIZE, "G2"):
        return True
    _check_fp(int.from_bytes(data[:48], "big") & _X_MASK, "G2", "x.c1 (imaginary part)")
    _check_fp(int.from_bytes(data[48:], "big"), "G2", "x.c0 (real part)")
    return False


def not_on_curve(group: str) -> str:
    return f"{group} point: x is not the x-coordinate of any point on the curve"


def not_in_subgroup(group: str) -> str:
    return f"{group} point is on the curve but not in the prime-order subgroup"
