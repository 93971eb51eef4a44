"""The command line: flags to config, a tiny end-to-end train, named errors."""

import json

import pytest

from pot_jax.cli import main
from pot_jax.config import ConfigError, TrainConfig

TINY = [
    "--dataset", "teacher", "--workers", "4", "--batch-size", "8", "--rounds", "60",
    "--eval-every", "20", "--hidden", "16", "--learning-rate", "0.5", "--no-progress",
]  # fmt: skip


def test_train_writes_config_metrics_and_summary(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["baseline", *TINY, "--run-dir", str(run)]) == 0
    out = capsys.readouterr().out
    assert "centralized test accuracy" in out and "data-parallel test accuracy" in out
    config = json.loads((run / "config.json").read_text())
    assert config["config"]["seed"] == 0 and config["config"]["workers"] == 4
    assert config["jax_version"] and config["device"]
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["round"] for x in lines] == [20, 40, 60]
    summary = json.loads((run / "summary.json").read_text())
    # Mean over honest workers is centralized SGD on the union batch.
    assert summary["data_parallel_accuracy"] == pytest.approx(
        summary["centralized_accuracy"], abs=0.02
    )
    assert summary["centralized_accuracy"] > 0.3  # well above 1/10 chance on the teacher task


def test_same_seed_same_metrics(tmp_path):
    for name in ("a", "b"):
        assert main(["baseline", *TINY, "--run-dir", str(tmp_path / name)]) == 0
    a = (tmp_path / "a" / "summary.json").read_text()
    b = (tmp_path / "b" / "summary.json").read_text()
    strip = ("seconds", "run_dir")
    ja = {k: v for k, v in json.loads(a).items() if not any(s in k for s in strip)}
    jb = {k: v for k, v in json.loads(b).items() if not any(s in k for s in strip)}
    assert ja == jb


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--model", "resnet"], "--model 'resnet': unknown model"),
        (["--dataset", "imagenet"], "imagenet"),
        (["--workers", "0"], "--workers 0: expected a positive integer"),
        (["--learning-rate", "nan"], "--learning-rate nan"),
        (["--partition", "zipf"], "--partition 'zipf'"),
        (["--aggregation", "average"], "average"),
        (
            ["--dataset", "mnist", "--data-dir", "/nonexistent/mnist"],
            "/nonexistent/mnist does not exist",
        ),
        (["--dataset", "mnist", "--data-dir", "/tmp"], "train-images"),
    ],
)
def test_bad_config_is_rejected_with_field_and_value(tmp_path, capsys, flags, message):
    code = main(["baseline", *TINY, *flags, "--run-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err


def test_unparseable_flag_exits_with_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["baseline", "--workers", "many"])
    assert exc.value.code == 2
    assert "--workers" in capsys.readouterr().err


def test_config_rejects_bad_values_directly():
    with pytest.raises(ConfigError, match="rounds = -3"):
        TrainConfig(rounds=-3)
    with pytest.raises(ConfigError, match="hidden = \\(\\)"):
        TrainConfig(hidden=())


def test_bench_throughput_prints_the_promised_fields(capsys):
    args = ["bench", "throughput", "--json", "--batch", "4", "--workers", "4", "--hidden", "32"]
    assert main([*args, "--rounds", "2", "--repeats", "1"]) == 0
    result = json.loads(capsys.readouterr().out)
    for key in (
        "centralized_examples_per_s", "pot_core_examples_per_s", "ratio", "breakdown_ms",
        "model", "batch", "workers", "params", "jax_version", "device",
    ):  # fmt: skip
        assert key in result
    parts = {"gradients", "encoding", "commitment_hashing", "aggregation", "update"}
    assert parts <= set(result["breakdown_ms"])
    assert result["ratio"] > 0


def test_bench_crypto_prints_backends_and_qc_sizes(capsys):
    args = ["bench", "crypto", "--json", "--sizes", "4,7", "--backends", "arkworks"]
    assert main([*args, "--workers", "5"]) == 0
    result = json.loads(capsys.readouterr().out)
    qc = result["bls"]["arkworks"]["qc_verify_ms"]
    assert set(map(str, qc)) == {"4", "7"}
    assert result["worker_signatures"]["n"] == 5


def test_bench_crypto_rejects_unknown_backend(capsys):
    assert main(["bench", "crypto", "--backends", "milagro", "--sizes", "4"]) == 2
    assert "milagro" in capsys.readouterr().err


PROTOCOL_TINY = [
    "--dataset", "teacher", "--workers", "8", "--batch-size", "8", "--rounds", "6",
    "--hidden", "16", "--learning-rate", "0.5", "--eval-every", "3",
    "--checkpoint-every", "3", "--no-progress",
]  # fmt: skip


def test_train_runs_the_protocol_and_audit_accepts_its_run_dir(tmp_path, capsys):
    run = tmp_path / "pot"
    assert main(["train", *PROTOCOL_TINY, "--run-dir", str(run)]) == 0
    out = capsys.readouterr().out
    for line in ("rounds committed", "PoT test accuracy", "cheaters caught", "wall time"):
        assert line in out
    assert main(["audit", str(run)]) == 0
    assert "audit passed" in capsys.readouterr().out


def test_audit_of_a_missing_run_dir_is_a_usage_error_with_the_path(tmp_path, capsys):
    assert main(["audit", str(tmp_path / "nothing")]) == 2
    assert "nothing: no such run directory" in capsys.readouterr().err
    assert main(["audit", str(tmp_path), "--recompute", "some"]) == 2
    assert "--recompute 'some'" in capsys.readouterr().err
    assert main(["audit", str(tmp_path), "--genesis", "beef"]) == 2
    assert "--genesis 'beef'" in capsys.readouterr().err


def test_train_attacks_the_runs_aggregation_and_refuses_an_unknown_rule(tmp_path, capsys):
    """``--attack optimal_alie`` needs no rule=: it searches against --aggregation."""
    run = tmp_path / "pot"
    flags = ["--rounds", "2", "--aggregation", "nnm+krum:f=2", "--attack", "optimal_alie"]
    assert main(["train", *PROTOCOL_TINY, *flags, "--run-dir", str(run)]) == 0
    genesis = json.loads((run / "config.json").read_text())["genesis"]
    assert genesis["config"]["attack"] == "optimal_alie"
    assert genesis["attack"].startswith("optimal_alie(rule=nnm+krum:f=2,")
    assert main(["audit", str(run)]) == 0
    capsys.readouterr()
    bad = ["--attack", "optimal_alie:rule=krumm", "--run-dir", str(tmp_path / "bad")]
    assert main(["train", *PROTOCOL_TINY, *bad]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "'krumm'" in err and "krum, multi_krum" in err, err


def test_keygen_then_train_with_keys_then_a_pinned_audit(tmp_path, capsys):
    keys = tmp_path / "keys"
    assert main(["keygen", str(keys), "--validators", "4", "--workers", "8"]) == 0
    assert "public.json" in capsys.readouterr().out
    assert main(["keygen", str(keys)]) == 2  # never overwritten
    assert "never overwritten" in capsys.readouterr().err
    run = tmp_path / "pot"
    assert main(["train", *PROTOCOL_TINY, "--keys", str(keys), "--run-dir", str(run)]) == 0
    genesis = json.loads((run / "config.json").read_text())["genesis_digest"]
    assert f"--genesis {genesis}" in capsys.readouterr().out
    pin = ["--genesis", genesis, "--validators", str(keys / "public.json")]
    assert main(["audit", str(run), *pin]) == 0
    assert f"trusted genesis {genesis} (pinned by --genesis and --validators)" in (
        capsys.readouterr().out
    )
    assert main(["audit", str(run), "--genesis", "ab" * 32]) == 1
    (run / "summary.json").unlink()
    data = (run / "transcript.log").read_bytes()
    (run / "transcript.log").write_bytes(data[: len(data) // 2])
    assert main(["audit", str(run)]) == 3
    assert "UNFINISHED" in capsys.readouterr().out


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--validators", "3"], "--validators 3"),
        (["--byzantine-validators", "7"], "--byzantine-validators '7'"),
        (["--byzantine-validators", "0,1"], "is more than f = 1"),
        (["--budget", "nan"], "--budget nan"),
        (["--learning-rate", "-1"], "--learning-rate -1"),
        (["--budget", "0"], "--budget 0"),
        (["--attack", "teleport"], "teleport"),
        (["--pattern", "gossip"], "--pattern 'gossip'"),
        (["--validator-strategy", "silent+lying"], "'lying': unknown validator behaviour"),
        (["--mode", "approximate"], "--mode 'approximate'"),
    ],
)
def test_bad_protocol_config_is_rejected_with_field_and_value(tmp_path, capsys, flags, message):
    assert main(["train", *PROTOCOL_TINY, *flags, "--run-dir", str(tmp_path / "r")]) == 2
    assert message in capsys.readouterr().err


def test_simulate_prints_commits_and_no_safety_violation(capsys):
    assert main(["simulate", "--n", "4", "--byzantine", "0:silent", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["all_decided"] and result["safety_violations"] == []


def _tree(root):
    return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_smoke_figures_never_touch_paper_figures(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    committed = tmp_path / "paper_figures"
    (committed / "f3_cost").mkdir(parents=True)
    (committed / "f3_cost" / "f3_cost.png").write_bytes(b"the paper-scale figure")
    (committed / "MEASURED.md").write_text("paper numbers\n")
    before = _tree(committed)
    assert main(["figures", "--only", "f3_cost"]) == 0
    assert (tmp_path / "runs" / "figures" / "smoke" / "f3_cost" / "f3_cost.png").exists()
    assert main(["figures", "--only", "f3_cost", "--out", "paper_figures"]) == 2
    assert "only paper-scale figures go into paper_figures/" in capsys.readouterr().err
    assert _tree(committed) == before


def test_a_second_baseline_into_the_same_directory_changes_nothing(tmp_path, capsys):
    run = tmp_path / "base"
    flags = ["baseline", "--dataset", "teacher", "--workers", "4", "--rounds", "3",
             "--hidden", "8", "--no-progress", "--run-dir", str(run)]  # fmt: skip
    assert main(flags) == 0
    before = _tree(run)
    assert main([*flags[:-2], "--rounds", "5", "--run-dir", str(run)]) == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and len(err.strip().splitlines()) == 1
    assert _tree(run) == before


def test_a_second_train_into_the_same_directory_says_so_in_one_line(tmp_path, capsys):
    run = tmp_path / "pot"
    assert main(["train", *PROTOCOL_TINY, "--run-dir", str(run)]) == 0
    before = _tree(run)
    capsys.readouterr()
    assert main(["train", *PROTOCOL_TINY, "--run-dir", str(run)]) == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and len(err.strip().splitlines()) == 1
    assert _tree(run) == before


def test_resume_takes_no_config_flags(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path), "--rounds", "5"]) == 2
    assert "drop --rounds" in capsys.readouterr().err


def test_train_logs_every_round_and_tensorboard_events(tmp_path, capsys):
    run = tmp_path / "pot"
    assert main(["train", *PROTOCOL_TINY, "--tensorboard", "--run-dir", str(run)]) == 0
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2, 3, 4, 5, 6]
    for key in ("loss", "accepted", "rejected_by_category", "caught", "recomputed", "view",
                "messages", "round_wall_seconds"):  # fmt: skip
        assert key in rows[0]
    assert [r["round"] for r in rows if "pot_test_accuracy" in r] == [3, 6]
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    units = json.loads((run / "summary.json").read_text())["units"]
    assert "base units" in units["ledger_emitted, ledger_burned, worker_rewards, validator_rewards"]
    assert "network delays" in units["virtual_time"]
    assert main(["audit", str(run)]) == 0


def test_the_progress_bar_stays_off_when_stderr_is_not_a_terminal(tmp_path):
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "pot_jax.cli", "train", *PROTOCOL_TINY[:-1], "--progress",
         "--run-dir", str(tmp_path / "pot")],
        capture_output=True,
        text=True,
        check=True,
    )  # fmt: skip
    assert "\r" not in out.stderr and "\r" not in out.stdout


@pytest.mark.parametrize(
    "argv, message",
    [
        (["simulate", "--byzantine", "9:silent"], "--byzantine '9': node 9 is outside 0..3"),
        (["simulate", "--byzantine", "0"], "--byzantine '0': expected NODE:STRATEGY"),
        (["simulate", "--byzantine", "0:equivocate"], "unknown strategy equivocate"),
        (["simulate", "--twins", "7"], "--twins '7': node 7 is outside 0..3"),
        (["simulate", "--drop", "1.5"], "--drop: '1.5' is not in [0, 1]"),
        (["bench", "crypto", "--sizes", "4,x"], "--sizes '4,x'"),
        (["bench", "detection", "--budget", "nan"], "--budget: 'nan' is not in (0, 1]"),
        (["train", "--dataset", "mnist", "--data-dir", "/nonexistent"], "--data-dir /nonexistent"),
    ],
)
def test_bad_flags_get_one_line_naming_the_flag(argv, message, capsys):
    with pytest.raises(SystemExit) if "--drop" in argv or "nan" in argv else _nothing():
        assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and "pot-jax 0.1.0" in capsys.readouterr().out


def test_beyond_f_stops_with_one_line_and_an_unfinished_auditable_transcript(tmp_path, capsys):
    run = tmp_path / "pot"
    argv = ["train", *PROTOCOL_TINY, "--byzantine-validators", "0,1", "--beyond-f"]
    assert main([*argv, "--run-dir", str(run)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no quorum from round 0: more than f validators faulty" in err[0]
    assert main(["audit", str(run)]) == 3


def test_keygen_refuses_a_directory_inside_a_run(tmp_path, capsys):
    run = tmp_path / "pot"
    assert main(["train", *PROTOCOL_TINY, "--run-dir", str(run)]) == 0
    assert main(["keygen", str(run / "keys")]) == 2
    assert "never live inside a run directory" in capsys.readouterr().err


def test_bench_aggregation_is_reached_through_the_cli(capsys):
    args = ["bench", "aggregation", "--json", "--workers", "8", "--params", "64"]
    assert main([*args, "--repeats", "1", "--numpy-repeats", "1", "--out", "-"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out and "mean" in json.dumps(out)
