"""The fault layer alone: schedule parsing, per-link determinism, each fault's effect.

The same faults through real streams are tested in ``test_transport.py``.
"""

import json

import pytest

from pot_jax.deploy.faults import FaultLayer, FaultSchedule, PartitionWindow

PARTITIONED = {
    "delay": 0.05,
    "delay_kind": "constant",
    "loss": 0.01,
    "duplicate": 0.0,
    "partitions": [
        {
            "start": 1.0,
            "end": 3.0,
            "groups": [["validator/0", "validator/1"], ["validator/2", "validator/3"]],
        }
    ],
}


def _fates(layer, sender, receiver, n, now=0.0):
    return [layer.decide(sender, receiver, now=now) for _ in range(n)]


def test_schedule_parses_the_documented_example_and_round_trips():
    schedule = FaultSchedule.from_json(json.dumps(PARTITIONED))
    assert schedule.delay == 0.05 and schedule.loss == 0.01
    assert schedule.partitions == (
        PartitionWindow(
            1.0,
            3.0,
            (frozenset({"validator/0", "validator/1"}), frozenset({"validator/2", "validator/3"})),
        ),
    )
    assert FaultSchedule.from_dict(schedule.to_dict()) == schedule
    assert FaultSchedule.from_dict({}) == FaultSchedule()


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"los": 0.1}, "'los'"),
        ({"loss": 1.5}, "'loss'"),
        ({"loss": "0.1"}, "'loss'"),
        ({"loss": True}, "'loss'"),
        ({"duplicate": -0.1}, "'duplicate'"),
        ({"delay": -1}, "'delay'"),
        ({"delay": float("nan")}, "'delay'"),
        ({"delay_kind": "lognormal"}, "'delay_kind'"),
        ({"partitions": {}}, "'partitions'"),
        ({"partitions": [{"start": 0, "end": 1}]}, "'partitions[0]'"),
        ({"partitions": [{"start": 2, "end": 1, "groups": []}]}, "'partitions[0].end'"),
        (
            {"partitions": [{"start": 0, "end": 1, "groups": [["a"], [3]]}]},
            "'partitions[0].groups'",
        ),
        (
            {"partitions": [{"start": 0, "end": 1, "groups": [["a"], ["a"]]}]},
            "'partitions[0].groups'",
        ),
        ({"partitions": [{"start": -1, "end": 1, "groups": []}]}, "'partitions[0].start'"),
        ({"partitions": [{"start": 0, "end": "1", "groups": []}]}, "'partitions[0].end'"),
    ],
)
def test_malformed_schedule_raises_naming_the_field(config, field):
    with pytest.raises(ValueError, match=field.replace("[", r"\[").replace("]", r"\]")):
        FaultSchedule.from_dict(config)


def test_malformed_json_and_non_object_raise():
    with pytest.raises(ValueError, match="not valid JSON"):
        FaultSchedule.from_json("{loss: 1}")
    with pytest.raises(ValueError, match="JSON object"):
        FaultSchedule.from_json("[0.1]")


def test_fate_of_each_message_depends_only_on_seed_and_its_link():
    """Traffic on other links does not move a link's decisions; another seed does."""
    schedule = FaultSchedule(loss=0.3, duplicate=0.3, delay=0.1, delay_kind="exponential")
    alone = FaultLayer(schedule, seed=5, start=0.0)
    busy = FaultLayer(schedule, seed=5, start=0.0)
    expected = _fates(alone, "worker/1", "validator/0", 50)
    got = []
    for _ in range(50):
        busy.decide("worker/2", "validator/0", now=0.0)
        got.append(busy.decide("worker/1", "validator/0", now=0.0))
    assert got == expected
    assert (
        _fates(FaultLayer(schedule, seed=6, start=0.0), "worker/1", "validator/0", 50) != expected
    )


def test_loss_rate_is_plausible_and_extremes_are_exact():
    fates = _fates(FaultLayer(FaultSchedule(loss=0.3), seed=1, start=0.0), "a", "b", 2000)
    lost = sum(f.dropped == "loss" for f in fates)
    assert 480 < lost < 720  # mean 600, sd 20
    assert all(
        f.dropped == "loss" for f in _fates(FaultLayer(FaultSchedule(loss=1.0)), "a", "b", 100)
    )
    assert all(f.delays == (0.0,) for f in _fates(FaultLayer(FaultSchedule()), "a", "b", 100))


def test_duplicate_one_queues_every_message_twice_with_its_delay():
    layer = FaultLayer(FaultSchedule(duplicate=1.0, delay=0.25), seed=0, start=0.0)
    assert all(f.delays == (0.25, 0.25) for f in _fates(layer, "a", "b", 100))


def test_exponential_delay_has_the_configured_mean():
    layer = FaultLayer(FaultSchedule(delay=0.2, delay_kind="exponential"), seed=3, start=0.0)
    delays = [f.delays[0] for f in _fates(layer, "a", "b", 4000)]
    assert min(delays) >= 0
    assert abs(sum(delays) / len(delays) - 0.2) < 0.02  # sd of the mean is 0.003


def test_partition_window_separates_groups_only_while_open():
    clock = [100.0]
    layer = FaultLayer(
        FaultSchedule.from_dict(PARTITIONED | {"loss": 0.0}), start=100.0, clock=lambda: clock[0]
    )
    for t, across, within in [
        (0.5, None, None),
        (1.0, "partition", None),
        (2.9, "partition", None),
        (3.0, None, None),
    ]:
        clock[0] = 100.0 + t
        assert layer.decide("validator/0", "validator/2").dropped == across, t
        assert layer.decide("validator/3", "validator/1").dropped == across, t
        assert layer.decide("validator/0", "validator/1").dropped == within, t
        # Listed in no group: cut off from everyone while the window is open.
        assert layer.decide("worker/9", "validator/0").dropped == across, t


def test_describe_records_the_injection_method():
    layer = FaultLayer(FaultSchedule.from_dict(PARTITIONED), seed=4)
    description = layer.describe()
    assert description["method"] == "user-space sender-side fault layer"
    assert description["seed"] == 4
    assert (
        FaultSchedule.from_dict(json.loads(json.dumps(description["schedule"]))) == layer.schedule
    )
