"""The interface's worked example (pasted into the README) runs and behaves as documented."""

import re
import subprocess
import sys
import textwrap

from tiny_round import W, attacked_round, honest_grads, make_ctx

import pot_jax.verification
from pot_jax.attacks import make_attack
from pot_jax.learning import pytree_digest
from pot_jax.verification import VerificationScheme, scheme, verify_fraud_proof


def _example_source() -> str:
    doc = scheme.__doc__
    start = doc.index("recomputes the gradients farthest from the coordinate median::")
    block = doc[start:].split("::\n", 1)[1]
    lines = []
    for line in block.splitlines():
        if line and not line.startswith("    "):
            break
        lines.append(line)
    return textwrap.dedent("\n".join(lines))


def test_docstring_example_is_about_twenty_lines_and_runs():
    source = _example_source()
    body = source[source.index("def outlier_check") :]
    assert 15 <= len([l for l in body.splitlines() if l.strip()]) <= 35
    namespace: dict = {}
    exec(compile(source, "<scheme docstring>", "exec"), namespace)
    outlier_check = namespace["outlier_check"]
    custom = outlier_check(fraction=0.25)
    assert isinstance(custom, VerificationScheme)
    assert custom.recomputations(W, 4) == 4 * 3

    ctx = make_ctx(round_=9)
    grads = honest_grads(ctx)
    byzantine = (2, 7)
    submissions, _ = attacked_round(ctx, make_attack("scaled", factor=8.0), byzantine, grads)
    submissions[5] = "not even a submission"
    selection = custom.select(ctx, 0, 4, None)
    assert custom.verify_selection(ctx, 0, 4, b"", selection)
    verdicts = custom.check(ctx, submissions, selection)
    assert [v.worker for v in verdicts] == list(range(W))
    for w in byzantine:
        assert not verdicts[w].accepted and verify_fraud_proof(verdicts[w].fraud_proof, ctx)
    assert not verdicts[5].accepted and "expected a Submission" in verdicts[5].reason
    assert all(verdicts[w].accepted for w in range(W) if w not in (2, 5, 7))
    assert sum(v.recomputed for v in verdicts) == 3


def test_public_names_are_exported():
    for name in pot_jax.verification.__all__:
        assert hasattr(pot_jax.verification, name), name
    assert re.search(r"outlier_check", scheme.__doc__)


def test_params_digest_is_the_model_hash():
    ctx = make_ctx()
    assert ctx.params_digest == pytree_digest(ctx.params, ctx.learner.spec)
    assert len(ctx.params_digest) == 32


def test_verification_depends_on_learning_and_crypto_only():
    """And on pot_jax.registry, the leaf module every component kind shares."""
    code = (
        "import sys, pot_jax.verification; "
        "print(sorted({m.split('.')[1] for m in sys.modules if m.startswith('pot_jax.')}))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "['crypto', 'learning', 'registry', 'verification']"
