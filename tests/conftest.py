"""Shared test setup: hypothesis profiles and strict JAX promotion.

The ``ci`` profile is deterministic (derandomized, no example database, no
deadline) and is selected whenever ``CI`` is set; ``dev`` explores more.
Choose explicitly with ``HYPOTHESIS_PROFILE=dev``.
"""

import atexit
import os
import shutil
import tempfile

import jax
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=25,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "dev",
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))

# Keep generated datasets out of the user's cache during tests.
if "POT_JAX_CACHE" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="pot-jax-test-cache-")
    os.environ["POT_JAX_CACHE"] = _cache
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)

jax.config.update("jax_numpy_rank_promotion", "raise")
