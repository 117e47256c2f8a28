import pytest
from pydantic import ValidationError

from tasks.config import ParamsError, cli_overrides, load_params, parse_params
from tests.conftest import REPO


def test_repo_params_load_and_are_frozen():
    params = load_params(REPO / "params.yaml")
    assert params.split.train == ("2013-01", "2013-04")
    with pytest.raises(ValidationError):
        params.train.lr = 1.0  # frozen


@pytest.mark.parametrize(
    "override, message",
    [
        ({"train.lrr": 0.1}, "train.lrr"),
        ({"train.lr": -1}, "train.lr"),
        ({"data.start": "2013-13"}, "data.start"),
        ({"split.valid": ["2013-01", "2013-01"]}, "time order"),
        ({"data.slices": ["distance"]}, "slices"),
    ],
)
def test_bad_values_are_refused_with_the_key_named(override, message):
    with pytest.raises(ParamsError, match=message):
        load_params(REPO / "params.yaml", overrides=override)


def test_unknown_section_is_refused():
    with pytest.raises(ParamsError, match="unknown params section"):
        load_params(REPO / "params.yaml", overrides={"nosuch.key": 1})
    with pytest.raises(ParamsError, match="surprise"):
        parse_params({**__import__("yaml").safe_load((REPO / "params.yaml").read_text()), "surprise": {}})


def test_override_changes_value_and_digest():
    base = load_params(REPO / "params.yaml")
    other = load_params(REPO / "params.yaml", overrides={"train.max_epochs": 3})
    assert other.train.max_epochs == 3 and base.digest() != other.digest()


@pytest.mark.parametrize(
    "lo, hi, bounds",
    [("2013-01", "2013-02", ("2013-01-01", "2013-03-01")), ("2013-12-30", "2013-12-31", ("2013-12-30", "2014-01-01"))],
)
def test_period_bounds(lo, hi, bounds):
    from tasks.config import period_bounds

    assert period_bounds(lo, hi) == bounds


def test_overlapping_day_windows_are_refused():
    with pytest.raises(ParamsError, match="time order"):
        load_params(REPO / "params.yaml", overrides={"split.valid": ["2013-04-30", "2013-05-31"]})


def test_cli_overrides_read_yaml_values_and_keep_dates_as_text():
    got = cli_overrides(["train.lr=0.003", "replay.end=2013-10-06", "data.slices=[carrier]", "x.y={a: 1}"])
    assert got == {"train.lr": 0.003, "replay.end": "2013-10-06", "data.slices": ["carrier"], "x.y": {"a": 1}}
    from monitoring.replay import replay_cfg

    params = load_params(REPO / "params.yaml", overrides={k: got[k] for k in ("train.lr", "replay.end")})
    assert params.train.lr == 0.003 and replay_cfg(params).end == "2013-10-06"  # a date read as YAML would fail
    with pytest.raises(ParamsError, match="KEY=VALUE"):
        cli_overrides(["train.lr"])
