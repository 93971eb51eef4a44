"""Every participant's own keys: generated from the OS, kept in files only its owner reads.

A run needs one BLS key per validator (votes, quorum certificates, the VRF
that picks its spot-check sample) and one worker-signature key per training
node. Three sources, recorded in the signed genesis as ``key_source``:

* ``random`` (the default of ``pot-jax train``): every secret comes from the
  operating system (``secrets.token_bytes``) and lives only in memory; the
  run header holds public keys and proofs of possession only.
* ``files``: ``pot-jax keygen DIR`` writes one file per node (mode 0600, in a
  0700 directory), and ``pot-jax train --keys DIR`` loads them, so a run can
  be repeated with the same keys, bit for bit. A key directory never lives
  inside a run directory.
* ``derived`` (SIMULATION ONLY): every secret is a public function of the
  chain id, the seed and the node index (``derived_keys``). Anyone can then
  sign quorum certificates, frame honest workers with fraud proofs and
  predict every validator's sample; ``pot-jax audit`` says so. It exists for
  sweeps that need bit-identical re-runs from the config alone.

What the seed alone determines: the data, the model's initialisation, the
batch assignment, which workers are Byzantine and what they send. What the
keys determine on top: the validators' VRF samples (hence which cheater is
caught when, and so the trained model once a cheater is caught) and every
signature. A run is determined by its config, its seed and its key files.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import stat
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pot_jax.consensus.keys import simulation_keys
from pot_jax.crypto import bls
from pot_jax.crypto.errors import CryptoError
from pot_jax.crypto.quorum import ValidatorSet
from pot_jax.crypto.worker_signatures import WorkerSignatureScheme, worker_signature_scheme

__all__ = [
    "KEY_SOURCES",
    "KeyFileError",
    "KeyRing",
    "derived_keys",
    "generate_keys",
    "load_key_dir",
    "public_keys_file",
    "write_key_dir",
]

KEY_SOURCES = ("random", "files", "derived")
KEY_FILE_FORMAT = "pot-jax/secret-key/v1"
PUBLIC_FILE = "public.json"
PUBLIC_FORMAT = "pot-jax/public-keys/v1"
_MAX_KEY_FILE_BYTES = 1 << 16


class KeyFileError(ValueError):
    """A key directory or key file that cannot be used, with what is wrong."""


@dataclass(frozen=True)
class KeyRing:
    """Secret and public keys of one run's validators and workers.

    The runner hands each node its own secret; only ``validator_set`` and
    ``worker_public_keys`` reach the transcript.
    """

    source: str
    validator_secret_keys: tuple[int, ...]
    validator_set: ValidatorSet
    worker_secret_seeds: tuple[bytes, ...]
    worker_public_keys: tuple[bytes, ...]
    worker_scheme: str

    def __repr__(self) -> str:  # never print a secret by accident
        return (
            f"KeyRing(source={self.source!r}, validators={self.validator_set.n}, "
            f"workers={len(self.worker_public_keys)}, worker_scheme={self.worker_scheme!r})"
        )

    def worker_signing_keys(self, scheme: WorkerSignatureScheme) -> list[Any]:
        return [scheme.keygen(seed)[0] for seed in self.worker_secret_seeds]

    def validator_report_keys(self) -> list[tuple[Any, bytes]]:
        """Each validator's Ed25519 report key ``(sk, pk)``, derived from its BLS secret.

        Reports are signed once per validator per round and checked by every
        validator; Ed25519 costs about a hundredth of a BLS pairing. The key is
        a function of the BLS secret (domain-separated hash), so it needs no
        file of its own; its public half is registered in the signed genesis.
        """
        return [report_key(sk) for sk in self.validator_secret_keys]

    def check_sizes(self, n_validators: int, n_workers: int) -> None:
        if self.validator_set.n != n_validators or len(self.worker_public_keys) != n_workers:
            raise KeyFileError(
                f"the keys are for {self.validator_set.n} validators and "
                f"{len(self.worker_public_keys)} workers, the config has {n_validators} "
                f"validators and {n_workers} workers"
            )


_REPORT_KEY_TAG = b"pot-jax/validator-report-key/v1\x00"


def report_key(validator_sk: int) -> tuple[Any, bytes]:
    """The Ed25519 report key ``(sk, pk)`` of the validator holding BLS secret ``validator_sk``."""
    seed = hashlib.sha256(_REPORT_KEY_TAG + validator_sk.to_bytes(32, "big")).digest()
    return worker_signature_scheme("ed25519").keygen(seed)


def _keyring(source, validator_sks, worker_seeds, scheme_name) -> KeyRing:
    scheme = worker_signature_scheme(scheme_name)
    registrations = [(bls.SkToPk(sk), bls.PopProve(sk)) for sk in validator_sks]
    worker_pks = tuple(scheme.keygen(seed)[1] for seed in worker_seeds)
    return KeyRing(
        source=source,
        validator_secret_keys=tuple(validator_sks),
        validator_set=ValidatorSet.from_registrations(registrations),
        worker_secret_seeds=tuple(worker_seeds),
        worker_public_keys=worker_pks,
        worker_scheme=scheme.name,
    )


def generate_keys(n_validators: int, n_workers: int, *, worker_scheme: str = "ed25519") -> KeyRing:
    """Fresh keys from the operating system's randomness (``secrets``)."""
    scheme = worker_signature_scheme(worker_scheme)
    validator_sks = [bls.KeyGen(secrets.token_bytes(32)) for _ in range(n_validators)]
    seeds = [secrets.token_bytes(32) for _ in range(n_workers)]
    return _keyring("random", validator_sks, seeds, scheme.name)


def derived_keys(
    n_validators: int, n_workers: int, *, chain_id: bytes, seed: int, worker_scheme: str = "ed25519"
) -> KeyRing:
    """SIMULATION ONLY: keys anyone can recompute from public values.

    Validators get ``consensus.keys.simulation_keys(n)`` and workers
    ``sha256("pot-jax/worker-key" || chain id || seed || index)``, exactly the
    keys every run used before secret keys existed, so figures made with them
    re-run bit for bit. An attacker calls this function too.
    """
    validator_sks, _ = simulation_keys(n_validators)
    seeds = [
        hashlib.sha256(b"pot-jax/worker-key" + chain_id + struct.pack("<qq", seed, i)).digest()
        for i in range(n_workers)
    ]
    return _keyring("derived", validator_sks, seeds, worker_scheme)


# -- key files -----------------------------------------------------------------------------


def _file_name(role: str, index: int) -> str:
    return f"{role}-{index:05d}.key"


def _write_secret(path: Path, obj: dict) -> None:
    data = (json.dumps(obj, sort_keys=True, indent=1) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def write_key_dir(directory: str | os.PathLike, keys: KeyRing) -> Path:
    """Write one 0600 file per node and ``public.json`` into a new 0700 directory.

    Refuses a directory that already holds anything: keys are never overwritten.
    """
    directory = Path(directory)
    for parent in [directory.absolute(), *directory.absolute().parents]:
        if (parent / "transcript.log").exists() or (parent / "config.json").exists():
            raise KeyFileError(
                f"{directory} is inside the run directory {parent}: secret keys never live "
                "inside a run directory; choose a directory outside it"
            )
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise KeyFileError(
            f"{directory} already exists and is not empty; keys are never overwritten "
            "(use it with --keys, or choose a new directory)"
        )
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    for i, sk in enumerate(keys.validator_secret_keys):
        _write_secret(
            directory / _file_name("validator", i),
            {
                "format": KEY_FILE_FORMAT,
                "role": "validator",
                "index": i,
                "scheme": "bls12-381-pop",
                "secret_key": sk.to_bytes(32, "big").hex(),
                "public_key": keys.validator_set.public_keys[i].hex(),
                "proof_of_possession": keys.validator_set.proofs_of_possession[i].hex(),
            },
        )
    for i, seed in enumerate(keys.worker_secret_seeds):
        _write_secret(
            directory / _file_name("worker", i),
            {
                "format": KEY_FILE_FORMAT,
                "role": "worker",
                "index": i,
                "scheme": keys.worker_scheme,
                "secret_key": seed.hex(),
                "public_key": keys.worker_public_keys[i].hex(),
            },
        )
    public = directory / PUBLIC_FILE
    public.write_text(json.dumps(public_keys_file(keys), indent=1, sort_keys=True) + "\n")
    return directory


def public_keys_file(keys: KeyRing) -> dict:
    """What operators publish and auditors pin (``pot-jax audit --validators FILE``)."""
    return {
        "format": PUBLIC_FORMAT,
        "validators": [
            [pk.hex(), pop.hex()]
            for pk, pop in zip(
                keys.validator_set.public_keys, keys.validator_set.proofs_of_possession, strict=True
            )
        ],
        "worker_keys": [pk.hex() for pk in keys.worker_public_keys],
        "worker_signature_scheme": keys.worker_scheme,
    }


def _read_secret(path: Path, role: str, index: int) -> dict:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise KeyFileError(
            f"{path} is missing (the key directory has too few {role} keys)"
        ) from None
    if not stat.S_ISREG(st.st_mode) or st.st_size > _MAX_KEY_FILE_BYTES:
        raise KeyFileError(f"{path} is not a key file (not a regular file of at most 64 KiB)")
    if st.st_mode & 0o077:
        raise KeyFileError(
            f"{path} is readable by others (mode {stat.S_IMODE(st.st_mode):o}); "
            f"a secret key must be mode 600: chmod 600 {path}"
        )
    try:
        obj = json.loads(path.read_bytes())
        ok = (
            obj["format"] == KEY_FILE_FORMAT
            and obj["role"] == role
            and obj["index"] == index
            and isinstance(obj["secret_key"], str)
        )
    except (ValueError, KeyError, TypeError):
        ok = False
    if not ok:
        raise KeyFileError(f"{path} is not a {KEY_FILE_FORMAT} file for {role} {index}")
    return obj


def load_key_dir(
    directory: str | os.PathLike, *, n_validators: int, n_workers: int, worker_scheme: str
) -> KeyRing:
    """Load the keys ``write_key_dir`` wrote; every public key is re-derived and checked."""
    directory = Path(directory)
    if not directory.is_dir():
        raise KeyFileError(f"--keys {directory}: no such directory (make one with pot-jax keygen)")
    validator_sks, seeds, worker_pks = [], [], []
    for i in range(n_validators):
        path = directory / _file_name("validator", i)
        obj = _read_secret(path, "validator", i)
        try:
            sk = int.from_bytes(bytes.fromhex(obj["secret_key"]), "big")
            pk = bls.SkToPk(sk)
        except (ValueError, CryptoError) as err:
            raise KeyFileError(f"{path}: the secret key is not a BLS secret key ({err})") from None
        if pk.hex() != obj.get("public_key"):
            raise KeyFileError(f"{path}: the public key does not belong to the secret key")
        validator_sks.append(sk)
    for i in range(n_workers):
        path = directory / _file_name("worker", i)
        obj = _read_secret(path, "worker", i)
        if obj.get("scheme") != worker_scheme:
            raise KeyFileError(
                f"{path}: a {obj.get('scheme')} key, the run signs with {worker_scheme}"
            )
        try:
            seed = bytes.fromhex(obj["secret_key"])
        except ValueError:
            raise KeyFileError(f"{path}: the secret key is not hex") from None
        seeds.append(seed)
        worker_pks.append(obj.get("public_key"))
    extra = directory / _file_name("validator", n_validators)
    if extra.exists() or (directory / _file_name("worker", n_workers)).exists():
        raise KeyFileError(
            f"{directory} holds keys for more nodes than the config's {n_validators} validators "
            f"and {n_workers} workers"
        )
    keys = _keyring("files", validator_sks, seeds, worker_scheme)
    for i, (claimed, pk) in enumerate(zip(worker_pks, keys.worker_public_keys, strict=True)):
        if claimed != pk.hex():
            path = directory / _file_name("worker", i)
            raise KeyFileError(f"{path}: the public key does not belong to the secret key")
    return keys
