"""Every entry of the FIGURES table runs end to end at smoke scale.

A figure entry with a typo, a module that drifts from the shared shape, or a
plot that reads anything but its data files fails here, not when the paper
figures are regenerated.
"""

import dataclasses
import importlib
import shutil
from pathlib import Path

import pytest
from matplotlib.text import Text

from experiments import FIGURES, SCALES, load, run_figures
from experiments.common import DATA_CSV, DATA_JSONL, METADATA, read_metadata

PLOT_INPUTS = (DATA_CSV, DATA_JSONL, METADATA, "throughput.csv")


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("figures")
    return root, run_figures(None, "smoke", root)


def test_every_figure_entry_names_its_own_module():
    for name, spec in FIGURES.items():
        assert spec.name == name
        assert importlib.import_module(spec.module).NAME == name


@pytest.mark.parametrize("name", list(FIGURES))
def test_figure_module_has_the_shared_shape(name):
    """Config docstring names the figure and command; one config per scale; run and plot."""
    module = load(name)
    assert set(module.CONFIGS) == set(SCALES)
    doc = module.Config.__doc__
    assert name in doc and f"pot-jax figures --only {name} --scale paper" in doc
    assert "Runtime" in doc and "Expected" in doc
    for config in module.CONFIGS.values():
        assert isinstance(config, module.Config)
        assert dataclasses.is_dataclass(config) and module.Config.__dataclass_params__.frozen
    assert callable(module.run) and callable(module.plot)


def test_smoke_run_writes_every_figure(smoke_run):
    root, results = smoke_run
    assert list(results) == list(FIGURES)
    for name in FIGURES:
        out = root / name
        assert (out / f"{name}.png").stat().st_size > 0
        assert (out / f"{name}.pdf").stat().st_size > 0
        assert (out / DATA_CSV).exists() or (out / DATA_JSONL).exists()
        meta = read_metadata(out)
        assert meta["figure"] == name and meta["scale"] == "smoke"
        for key in ("config", "seeds", "git_commit", "jax_version", "device", "wall_seconds"):
            assert key in meta


@pytest.mark.parametrize("name", list(FIGURES))
def test_plot_reads_only_the_data_files(smoke_run, tmp_path, name):
    """Copy just the data files elsewhere; plot must rebuild both outputs from them."""
    root, _ = smoke_run
    data = tmp_path / "data" / name
    data.mkdir(parents=True)
    for file_name in PLOT_INPUTS:
        if (root / name / file_name).exists():
            shutil.copy(root / name / file_name, data / file_name)
    paths = load(name).plot(data, tmp_path / "fig")
    assert sorted(p.name for p in paths) == sorted([f"{name}.png", f"{name}.pdf"])
    assert all(p.stat().st_size > 0 for p in paths)


PAPER_FIGURES = Path(__file__).resolve().parents[1] / "paper_figures"
SMOKE_STAMP = "smoke scale: not a measurement"


def _texts_under_the_stamp(fig) -> list[str]:
    """Every non-empty text of ``fig`` whose drawn box overlaps the smoke stamp's."""
    renderer = fig.canvas.get_renderer()
    stamps = [t for t in fig.texts if t.get_text() == SMOKE_STAMP]
    assert len(stamps) == 1, "a smoke-scale figure carries exactly one stamp"
    box = stamps[0].get_window_extent(renderer)
    return [
        t.get_text()
        for t in fig.findobj(Text)
        if t is not stamps[0]
        and t.get_visible()
        and t.get_text().strip()
        and t.get_window_extent(renderer).overlaps(box)
    ]


@pytest.mark.parametrize("name", list(FIGURES))
def test_smoke_stamp_covers_no_label_title_or_legend(smoke_run, tmp_path, monkeypatch, name):
    """The stamp on a smoke-scale figure overlaps no other text of the figure."""
    root, _ = smoke_run
    module = load(name)
    real_save = module.save_figure
    under = []

    def save_and_check(fig, fig_dir, fig_name, *, scale=None):
        paths = real_save(fig, fig_dir, fig_name, scale=scale)
        under.append(_texts_under_the_stamp(fig))
        return paths

    monkeypatch.setattr(module, "save_figure", save_and_check)
    module.plot(root / name, tmp_path)
    assert under == [[]]


@pytest.mark.parametrize("name", list(FIGURES))
def test_committed_paper_data_still_plot(tmp_path, name):
    """The plot code reads the committed paper-scale data files as they are."""
    data = PAPER_FIGURES / name
    if not (data / METADATA).exists():
        pytest.skip(f"no committed data for {name}")
    paths = load(name).plot(data, tmp_path)
    assert sorted(p.name for p in paths) == sorted([f"{name}.png", f"{name}.pdf"])
    assert all(p.stat().st_size > 0 for p in paths)
    assert read_metadata(data)["scale"] == "paper"


def test_unknown_figure_name_raises_value_error_naming_it(tmp_path):
    with pytest.raises(ValueError, match="f9_nonexistent"):
        run_figures(["f7_crypto", "f9_nonexistent"], "smoke", tmp_path)
    assert not any(tmp_path.iterdir())  # nothing ran


def test_unknown_scale_raises_value_error_naming_it(tmp_path):
    with pytest.raises(ValueError, match="'huge'"):
        run_figures(None, "huge", tmp_path)


def test_measured_summary_is_computed_from_every_figures_data(smoke_run):
    """run_figures rewrites MEASURED.md from the data files; each figure gets its numbers."""
    from experiments.summary import MEASURED_MD, summarize

    root, _ = smoke_run
    text = (root / MEASURED_MD).read_text()
    assert text == summarize(root)
    for name in FIGURES:
        section = text.split(f"## {name}\n", 1)[1].split("\n## ", 1)[0]
        assert "scale **smoke**" in section and "\n- " in section, name
    assert "not run" in summarize(root / "empty")


def test_cost_break_even_puts_the_savings_at_the_target_and_none_when_out_of_range():
    """The break-even values the README quotes for claim 3 solve savings == 60%."""
    from experiments.f3_cost import PAPER_SAVINGS, SENSITIVITY, CostInputs, break_even, savings

    base = CostInputs(throughput_ratio=0.516, verification_overhead=0.076)
    found = 0
    for name in SENSITIVITY:
        at = break_even(base, name)
        if at is None:
            continue
        found += 1
        moved = dataclasses.replace(base, **{name: at})
        assert savings(moved) == pytest.approx(PAPER_SAVINGS, abs=1e-9), name
    assert found >= 8
    # Raising the datacenter's utilisation to 1 still leaves these inputs above 60%.
    assert break_even(base, "dc_utilisation") is None
    # Capital is the input the claim hinges on: a few cents an hour decide it.
    assert 0.05 < break_even(base, "pot_capital_hourly_usd") < 0.1
    with pytest.raises(ValueError, match="unknown cost input 'price'"):
        break_even(base, "price")


def test_f1_times_the_centralized_baseline_separately(smoke_run):
    """f1's wall-time panel needs the baseline's own seconds, inside the run's total."""
    from experiments.common import read_jsonl

    root, _ = smoke_run
    evals = [r for r in read_jsonl(root / "f1_accuracy" / DATA_JSONL) if r["kind"] == "eval"]
    assert evals
    for r in evals:
        assert 0.0 < r["centralized_wall_seconds"] < r["wall_seconds"], r
    assert "wall seconds to round" in (root / "MEASURED.md").read_text()


@pytest.mark.parametrize("fails_in", ["run", "plot"])
def test_a_failing_figure_leaves_the_previous_files_in_place(tmp_path, monkeypatch, fails_in):
    """Committed figures survive a crash: the old directory is replaced only on success."""
    import types

    import experiments

    real = load("f3_cost")
    run_figures(["f3_cost"], "smoke", tmp_path)
    before = {p.name: p.read_bytes() for p in (tmp_path / "f3_cost").iterdir()}

    def broken(stage):
        def fail(*args):
            if stage == "run":
                (args[1] / "data.csv").write_text("half written")
            raise RuntimeError(f"{stage} failed")

        return fail

    fake = types.SimpleNamespace(
        CONFIGS=real.CONFIGS,
        run=broken("run") if fails_in == "run" else real.run,
        plot=broken("plot") if fails_in == "plot" else real.plot,
    )
    monkeypatch.setattr(experiments, "load", lambda name: fake)
    with pytest.raises(RuntimeError, match=f"{fails_in} failed"):
        run_figures(["f3_cost"], "smoke", tmp_path)
    after = {p.name: p.read_bytes() for p in (tmp_path / "f3_cost").iterdir()}
    assert after == before
    monkeypatch.setattr(experiments, "load", load)
    run_figures(["f3_cost"], "smoke", tmp_path)  # the leftover staging dir is no obstacle
    assert sorted(p.name for p in tmp_path.iterdir()) == ["MEASURED.md", "f3_cost"]


def test_f6_reads_a_grown_sweep_of_its_setting_and_marks_what_is_not_run(tmp_path, monkeypatch):
    """f6 plots a sweep grown with --resume; a sweep of another setting is not its source."""
    import json

    from experiments.common import write_metadata
    from pot_jax.bench import robustness as rb

    f6 = load("f6_robustness")
    small = dataclasses.replace(rb.PRESETS["tiny"], aggregators=("mean",), attacks=("alie",))
    grown = dataclasses.replace(small, aggregators=("mean", "trimmed_mean"))
    result = rb.measure_robustness(small)
    result["config"] = json.loads(json.dumps(dataclasses.asdict(grown)))  # as a resume leaves it
    source = tmp_path / "sweep.json"
    source.write_text(json.dumps({"sweep": result}))
    assert f6._stored(f6.Config(sweep=small, source=str(source))) is not None
    other = dataclasses.replace(small, learning_rate=0.05)
    assert f6._stored(f6.Config(sweep=other, source=str(source))) is None
    data_dir = tmp_path / "data"
    f6.run(f6.Config(sweep=small, source=str(source)), data_dir)
    write_metadata(
        data_dir,
        name=f6.NAME,
        scale="smoke",
        config=f6.Config(sweep=small),
        seeds=[0],
        wall_seconds=0.0,
    )
    titles = []
    monkeypatch.setattr(
        f6, "save_figure", lambda fig, *a, **k: titles.append(fig.get_suptitle()) or []
    )
    f6.plot(data_dir, tmp_path / "fig")
    assert "not run yet: trimmed mean" in titles[0].replace("\n", " ")
    summary = f6.summary(data_dir)
    assert any(line.startswith("mean:") for line in summary)
    assert not any(line.startswith("trimmed_mean:") for line in summary)  # never run
