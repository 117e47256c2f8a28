"""Guard: nothing known only after the flight (departure or arrival times, delays) is a feature."""

import pytest

from flightloop.config import load_params
from tasks.prepare import LEAKY_COLUMNS, build_features
from tests.conftest import REPO

PARAMS = load_params(REPO / "params.yaml")


def test_configured_features_do_not_leak():
    assert LEAKY_COLUMNS == {"dep_time", "dep_delay", "arr_time", "arr_delay", "air_time"}
    assert not LEAKY_COLUMNS & set(PARAMS.data.features)


def test_feature_rows_do_not_carry_leaky_columns(flights_tiny, weather_tiny, planes_tiny):
    frame = build_features(flights_tiny, {"weather": weather_tiny, "planes": planes_tiny}, PARAMS.data)
    assert not LEAKY_COLUMNS & set(frame.columns)


@pytest.mark.parametrize("leak", sorted(LEAKY_COLUMNS))
def test_a_leaky_feature_is_refused(flights_tiny, weather_tiny, planes_tiny, leak):
    cfg = load_params(REPO / "params.yaml", overrides={"data.numeric": [*PARAMS.data.numeric, leak]}).data
    frame = flights_tiny.copy()
    ref = {"weather": weather_tiny, "planes": planes_tiny}
    with pytest.raises(ValueError, match="leak"):
        build_features(frame, ref, cfg)
