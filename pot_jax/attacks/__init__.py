"""Byzantine behaviours: what cheating workers send (``pot_jax.attacks.workers``).

Depends on ``pot_jax.learning`` only.
"""

from pot_jax.attacks.workers import (
    ATTACK_NAMES,
    GARBAGE_KINDS,
    WRONG_SHAPE_KINDS,
    Attack,
    AttackContext,
    alie,
    alie_z,
    cheat_sometimes,
    choose_byzantine,
    commitment_of,
    free_rider,
    garbage,
    gaussian,
    honest,
    ipm,
    label_flip,
    lazy,
    make_attack,
    nan_inf,
    scaled,
    sign_flip,
    wrong_shape,
)

__all__ = [
    "ATTACK_NAMES",
    "GARBAGE_KINDS",
    "WRONG_SHAPE_KINDS",
    "Attack",
    "AttackContext",
    "alie",
    "alie_z",
    "cheat_sometimes",
    "choose_byzantine",
    "commitment_of",
    "free_rider",
    "garbage",
    "gaussian",
    "honest",
    "ipm",
    "label_flip",
    "lazy",
    "make_attack",
    "nan_inf",
    "scaled",
    "sign_flip",
    "wrong_shape",
]
