import pytest
from pydantic import ValidationError

from flightloop.config import ParamsError, cli_overrides, load_params, parse_params
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
    from flightloop.config import period_bounds

    assert period_bounds(lo, hi) == bounds


def test_overlapping_day_windows_are_refused():
    with pytest.raises(ParamsError, match="time order"):
        load_params(REPO / "params.yaml", overrides={"split.valid": ["2013-04-30", "2013-05-31"]})


def test_cli_overrides_read_yaml_values_and_keep_dates_as_text():
    got = cli_overrides(["train.lr=0.003", "replay.end=2013-10-06", "data.slices=[carrier]", "x.y={a: 1}"])
    assert got == {"train.lr": 0.003, "replay.end": "2013-10-06", "data.slices": ["carrier"], "x.y": {"a": 1}}
    params = load_params(REPO / "params.yaml", overrides={k: got[k] for k in ("train.lr", "replay.end")})
    assert params.train.lr == 0.003 and params.replay_cfg().end == "2013-10-06"  # a date read as YAML would fail
    with pytest.raises(ParamsError, match="KEY=VALUE"):
        cli_overrides(["train.lr"])


def _defaults_disagreeing(model: type, section: dict, where: str) -> list[str]:
    """Keys of `section` (the file's values) whose code default in `model` is a different value."""
    from pydantic import BaseModel
    from pydantic_core import PydanticUndefined

    out = []
    for key, field in model.model_fields.items():
        name = field.alias or key
        if name not in section:
            continue
        ann = field.annotation
        nested = next(
            (a for a in (ann, *getattr(ann, "__args__", ())) if isinstance(a, type) and issubclass(a, BaseModel)), None
        )
        if nested is not None and isinstance(section[name], dict):
            out += _defaults_disagreeing(nested, section[name], f"{where}.{name}")
            continue
        default = field.get_default(call_default_factory=True)
        if default is PydanticUndefined:
            continue  # required: the file is the only default
        file_value = model(**{**_required(model, section), name: section[name]}).__dict__[key]
        if default != file_value:
            out.append(f"{where}.{name}: code says {default!r}, params.yaml says {file_value!r}")
    return out


def _required(model: type, section: dict) -> dict:
    return {k: v for k, v in section.items() if k in {f.alias or n for n, f in model.model_fields.items()}}


def test_code_defaults_agree_with_params_yaml():
    """params.yaml is the one source of defaults: a key a user leaves out means what our file says."""
    import yaml

    from flightloop.config import Params

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    load_params(REPO / "params.yaml")  # every section validates
    disagreeing = []
    for key, field in Params.model_fields.items():
        name = field.alias or key
        ann = field.annotation
        model = next(a for a in (ann, *getattr(ann, "__args__", ())) if isinstance(a, type))
        if name in raw and hasattr(model, "model_fields"):
            disagreeing += _defaults_disagreeing(model, raw[name], name)
    assert not disagreeing, "\n".join(disagreeing)


@pytest.mark.parametrize(
    "override, message",
    [
        ({"gate.margn": 0.1}, "gate.margn"),
        ({"policy.cooldown": 3}, "policy.cooldown"),
        ({"monitoring.drift_treshold": 0.2}, "monitoring.drift_treshold"),
        ({"serving.port": -1}, "serving.port"),
        ({"replay.policies": {"drift": {"drift_shares": 0.2}}}, "drift_shares"),
        ({"monitoring.exclude_features": ["nope"]}, "exclude_features"),
    ],
)
def test_every_section_is_validated_when_params_load(override, message):
    """A typo in any section fails at load, before the first stage runs, naming the key."""
    with pytest.raises(ParamsError, match=message):
        load_params(REPO / "params.yaml", overrides=override)
