"""Components by name or import path, with parameters, from flags, config files and the audit.

Issue 12, section 3. The plugin module lives outside the package (tests/plugins/).
"""

import json
from pathlib import Path

import pytest

from pot_jax.cli import main
from pot_jax.config import ConfigError, ProtocolConfig
from pot_jax.protocol.audit import AuditUsageError, audit
from pot_jax.protocol.transcript import RecordKind, TranscriptReader
from pot_jax.registry import parse_spec

TINY = [
    "--dataset", "teacher", "--workers", "8", "--batch-size", "8", "--rounds", "4",
    "--hidden", "16", "--learning-rate", "0.5", "--eval-every", "2",
    "--checkpoint-every", "2", "--no-progress",
]  # fmt: skip


@pytest.fixture
def plugins(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parent / "plugins"))


def test_spec_syntax_round_trips():
    assert str(parse_spec("krum:f=3")) == "krum:f=3"
    spec = parse_spec("pot_plugins:shifted:shift=-2.5")
    assert spec.name == "pot_plugins:shifted" and spec.kwargs == {"shift": -2.5}
    assert parse_spec("cheat_sometimes:attack=sign_flip,q=0.3").kwargs == {
        "attack": "sign_flip",
        "q": 0.3,
    }
    for bad in ("", "krum:f=1,f=2", "krum:f=1,g", "9lives", "a.b:"):
        with pytest.raises(ValueError):
            parse_spec(bad, flag="--aggregation")


@pytest.mark.parametrize(
    "field,value,canonical",
    [
        ("aggregation", "krum:f=1", "krum:f=1"),
        ("aggregation", "trimmed_mean: trim=1", "trimmed_mean:trim=1"),
        ("attack", "scaled:factor=-4", "scaled:factor=-4"),
        ("validator_strategy", "silent+garbage", "silent+garbage"),
    ],
)
def test_components_take_parameters_and_are_recorded_canonically(field, value, canonical):
    config = ProtocolConfig(**{field: value})
    assert getattr(config, field) == canonical


@pytest.mark.parametrize(
    "fields,message",
    [
        ({"aggregation": "krum"}, "krum needs parameter 'f'"),
        ({"aggregation": "krum:g=1"}, "has no parameter 'g'"),
        ({"attack": "teleport"}, "unknown worker attack"),
        ({"attack": "nowhere.mod:thing"}, "cannot import it"),
        ({"verification": "full_recompute", "budget": 0.3}, "does not use --budget"),
        ({"verification": "robust_only", "mode": "tolerance"}, "does not use --mode"),
        ({"verification": "spot_check:budget=0.3"}, "has no parameter 'budget'"),
    ],
)
def test_bad_components_are_rejected_with_the_flag(fields, message):
    with pytest.raises(ConfigError, match=message):
        ProtocolConfig(**fields)


def test_help_lists_the_registered_names(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert "names: mean, coordinate_median" in out and "cheat_sometimes" in out
    assert "spot_check, full_recompute, robust_only" in out and "equivocating_primary" in out


def test_a_registered_plugin_is_selectable_by_name(plugins):
    import pot_plugins

    from pot_jax.attacks import register_attack
    from pot_jax.attacks.workers import ATTACKS

    register_attack("shifted_for_test", pot_plugins.shifted)
    try:
        assert (
            ProtocolConfig(attack="shifted_for_test:shift=2").attack == "shifted_for_test:shift=2"
        )
        with pytest.raises(ValueError, match="already registered"):
            register_attack("shifted_for_test", pot_plugins.shifted)
    finally:
        ATTACKS._factories.pop("shifted_for_test")


def test_plugins_by_import_path_run_and_the_audit_rebuilds_them(plugins, tmp_path, capsys):
    run = tmp_path / "run"
    flags = [
        "--attack", "pot_plugins:shifted:shift=0.5",
        "--aggregation", "pot_plugins:half_mean",
        "--verification", "pot_plugins:every_gradient:tag=t1",
    ]  # fmt: skip
    assert main(["train", *TINY, *flags, "--run-dir", str(run)]) == 0
    genesis = json.loads((run / "config.json").read_text())["genesis"]
    assert genesis["config"]["attack"] == "pot_plugins:shifted:shift=0.5"
    assert genesis["config"]["aggregation"] == "pot_plugins:half_mean"
    assert genesis["verification"] == "every_gradient(mode=bitwise, tag=t1)"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["cheaters_caught"] == summary["byzantine_workers"]  # every gradient checked
    with pytest.raises(AuditUsageError, match="--allow-plugins"):
        audit(run)  # the auditor must choose to run the run's code
    report = audit(run, recompute="all", allow_plugins=True)
    assert report.ok, str(report)
    assert report.reexecuted == 4


def test_config_file_reproduces_a_run_and_flags_override_it(tmp_path, capsys):
    first = tmp_path / "first"
    assert main(["train", *TINY, "--keys", "derived", "--attack", "scaled:factor=-4",
                 "--run-dir", str(first)]) == 0  # fmt: skip
    again = tmp_path / "again"
    assert main(["train", "--config", str(first / "config.json"), "--run-dir", str(again)]) == 0

    def records(run):
        return [r.payload for r in TranscriptReader(run / "transcript.log") if r.kind != 1]

    assert records(first) == records(again)
    toml = tmp_path / "c.toml"
    toml.write_text(
        'dataset = "teacher"\nworkers = 8\nrounds = 2\nhidden = [16]\nprogress = false\n'
    )
    third = tmp_path / "third"
    assert main(["train", "--config", str(toml), "--rounds", "3", "--run-dir", str(third)]) == 0
    assert json.loads((third / "summary.json").read_text())["rounds_committed"] == 3
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"learning_rat": 0.1}))
    capsys.readouterr()
    assert main(["train", "--config", str(bad), "--run-dir", str(tmp_path / "x")]) == 2
    assert "unknown fields ['learning_rat']" in capsys.readouterr().err
    assert RecordKind.HEADER == 1


def test_model_and_dataset_plugins_by_import_path_pass_a_full_audit(plugins, tmp_path):
    run = tmp_path / "run"
    flags = [
        "--model",
        "pot_plugins:wide_mlp:factor=3",
        "--dataset",
        "pot_plugins:tiny_teacher:dim=5",
    ]
    assert main(["train", *TINY, *flags, "--byzantine-fraction", "0", "--run-dir", str(run)]) == 0
    genesis = json.loads((run / "config.json").read_text())["genesis"]
    assert genesis["config"]["model"] == "pot_plugins:wide_mlp:factor=3"
    report = audit(run, recompute="all", allow_plugins=True)
    assert report.ok and report.reexecuted == 4, str(report)
