"""Verification schemes: which gradients validators recompute, and the verdicts.

The interface (``VerificationScheme``, with a worked example of a custom
scheme) is documented in ``pot_jax.verification.scheme``; the shipped schemes
and their detection probability in ``pot_jax.verification.schemes``; fraud
proofs in ``pot_jax.verification.fraud_proof``.

Depends on ``pot_jax.learning`` and ``pot_jax.crypto`` only.
"""

from pot_jax.verification.checks import (
    Category,
    Verdict,
    cheap_checks,
    check_submissions,
    combine_verdicts,
    recheck,
)
from pot_jax.verification.context import (
    RoundContext,
    Submission,
    batch_digest,
    expected_gradient,
)
from pot_jax.verification.fraud_proof import (
    DISTANCE_EPS,
    MODES,
    FraudProof,
    FraudProofDecodeError,
    check_fraud_proof,
    compare_gradients,
    gradient_distance,
    l2_norm,
    verify_fraud_proof,
)
from pot_jax.verification.scheme import (
    SCHEME_MODES,
    CheckFn,
    SelectFn,
    Selection,
    VerificationScheme,
    VerifySelectionFn,
)
from pot_jax.verification.schemes import (
    SCHEME_NAMES,
    SCHEMES,
    detection_probability,
    full_recompute,
    make_scheme,
    register_scheme,
    robust_only,
    spot_check,
    validator_fraction,
)
from pot_jax.verification.tolerance import (
    DEFAULT_FLOOR,
    DEFAULT_MULTIPLE,
    CalibrationStats,
    calibrate_threshold,
)

__all__ = [
    "DEFAULT_FLOOR",
    "DEFAULT_MULTIPLE",
    "DISTANCE_EPS",
    "MODES",
    "SCHEME_MODES",
    "SCHEME_NAMES",
    "CalibrationStats",
    "Category",
    "CheckFn",
    "FraudProof",
    "FraudProofDecodeError",
    "RoundContext",
    "SelectFn",
    "Selection",
    "Submission",
    "VerificationScheme",
    "Verdict",
    "VerifySelectionFn",
    "batch_digest",
    "calibrate_threshold",
    "cheap_checks",
    "check_fraud_proof",
    "check_submissions",
    "combine_verdicts",
    "compare_gradients",
    "detection_probability",
    "expected_gradient",
    "full_recompute",
    "gradient_distance",
    "l2_norm",
    "make_scheme",
    "SCHEMES",
    "register_scheme",
    "recheck",
    "robust_only",
    "spot_check",
    "validator_fraction",
    "verify_fraud_proof",
]
