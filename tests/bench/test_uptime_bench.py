"""bench uptime never replaces a committed measurement without --force."""

from pot_jax.bench import uptime


def test_uptime_refuses_to_replace_the_figures_real_node_point(tmp_path, capsys):
    figure = tmp_path / "f2_uptime"
    figure.mkdir()
    (figure / "real_nodes.json").write_text('{"kept": true}')
    argv = ["--out", str(tmp_path / "new.json"), "--figure-data", str(figure), "--from-run"]
    assert uptime.main(argv + ["--run-dir", str(tmp_path / "none")]) == 2
    assert "real_nodes.json exists" in capsys.readouterr().out
    assert (figure / "real_nodes.json").read_text() == '{"kept": true}'
    assert not (tmp_path / "new.json").exists()


def test_wilson_interval_brackets_the_rate():
    low, high = uptime._wilson(59, 64)
    assert 0.82 < low < 59 / 64 < high < 0.97
