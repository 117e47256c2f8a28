import numpy as np
import pandas as pd
import pytest

from flightloop.config import load_params
from models.preprocess import UNKNOWN, Preprocessor
from tasks.prepare import build_features, flights_features, label_rate_by_month, split_by_window
from tests.conftest import REPO

PARAMS = load_params(
    REPO / "params.yaml",
    overrides={
        "split.train": ["2013-01", "2013-01"],
        "split.valid": ["2013-02", "2013-02"],
        "split.test": ["2013-03", "2013-03"],
    },
)


def test_label_is_late_over_15_min_or_cancelled(flights_tiny, weather_tiny, planes_tiny):
    out = flights_features(flights_tiny, weather_tiny, planes_tiny)
    # arr_delay: 11, 16, NaN (cancelled), 15 (not late), 10, 15.5
    assert out["late"].tolist() == [0, 1, 1, 0, 0, 1]


def test_weather_and_plane_joined_at_scheduled_hour(flights_tiny, weather_tiny, planes_tiny):
    out = flights_features(flights_tiny, weather_tiny, planes_tiny)
    assert len(out) == len(flights_tiny)
    assert out["temp"].tolist() == weather_tiny["temp"].tolist()
    assert out.loc[0, "plane_year"] == 1999 and np.isnan(out.loc[2, "plane_year"])
    assert out["sched_dep_hour"].tolist() == [5, 6, 7, 5, 9, 10]
    assert out.loc[0, "day_of_week"] == pd.Timestamp("2013-01-01").dayofweek


def test_build_features_keeps_only_configured_columns(flights_tiny, weather_tiny, planes_tiny):
    frame = build_features(flights_tiny, {"weather": weather_tiny, "planes": planes_tiny}, PARAMS)
    assert set(frame.columns) == {*PARAMS.data.features, *PARAMS.data.key, "time_hour", "late"}


def test_split_by_window_and_empty_split(flights_tiny, weather_tiny, planes_tiny):
    frame = build_features(flights_tiny, {"weather": weather_tiny, "planes": planes_tiny}, PARAMS)
    parts = split_by_window(frame, PARAMS.split, "time_hour")
    assert [len(parts[s]) for s in ("train", "valid", "test")] == [3, 2, 1]
    later = load_params(REPO / "params.yaml").split  # test month June: absent from the tiny frame
    with pytest.raises(ValueError, match="split 'valid'"):
        split_by_window(frame, later, "time_hour")


def test_label_rate_by_month(flights_tiny, weather_tiny, planes_tiny):
    frame = build_features(flights_tiny, {"weather": weather_tiny, "planes": planes_tiny}, PARAMS)
    rates = label_rate_by_month(frame, "time_hour", "late")
    assert rates.to_dict("list") == {
        "month": ["2013-01", "2013-02", "2013-03"],
        "rows": [3, 2, 1],
        "label_rate": [round(2 / 3, 4), 0.0, 1.0],
    }


@pytest.mark.parametrize("value, expected_code", [("a", 1), ("b", 2), ("zzz", UNKNOWN), (None, UNKNOWN)])
def test_preprocessor_unknown_bucket(value, expected_code):
    train = pd.DataFrame({"c": ["a", "b", "a", "b"], "x": [1.0, 2.0, None, 3.0]})
    pre = Preprocessor.fit(train, ("c",), ("x",))
    codes, _ = pre.transform(pd.DataFrame({"c": [value], "x": [1.0]}))
    assert codes[0, 0] == expected_code


def test_preprocessor_imputes_scales_clips_and_flags_missing(tmp_path):
    train = pd.DataFrame({"c": ["a"] * 4, "x": [1.0, 2.0, None, 3.0]})
    pre = Preprocessor.fit(train, ("c",), ("x",))
    _, nums = pre.transform(pd.DataFrame({"c": ["a", "a", "a"], "x": [None, 100.0, np.inf]}))
    # column 0 scaled value, column 1 the was-missing flag
    assert nums[0, 0] == pytest.approx((2.0 - pre.mean["x"]) / pre.std["x"])  # median imputed
    assert nums[1, 0] == pytest.approx((3.0 - pre.mean["x"]) / pre.std["x"])  # clipped to train max
    assert nums[:, 1].tolist() == [1.0, 0.0, 1.0]
    pre.save(tmp_path / "p.json")
    again = Preprocessor.load(tmp_path / "p.json")
    assert np.array_equal(again.transform(train)[1], pre.transform(train)[1])


def test_min_category_count_sends_rare_values_to_unknown():
    train = pd.DataFrame({"c": ["a", "a", "a", "rare"], "x": 1.0})
    pre = Preprocessor.fit(train, ("c",), ("x",), min_count=2)
    assert pre.vocab["c"] == ["a"] and pre.transform(pd.DataFrame({"c": ["rare"], "x": [1.0]}))[0][0, 0] == UNKNOWN


@pytest.mark.parametrize(
    "train, valid, test, sizes",
    [
        (["2013-01-01", "2013-01-01"], ["2013-01-02", "2013-02-01"], ["2013-02-02", "2013-03"], [2, 2, 2]),
        (["2013-01", "2013-01"], ["2013-02-01", "2013-02-02"], ["2013-02-03", "2013-03-31"], [3, 1, 2]),
    ],
)
def test_split_windows_may_be_days(flights_tiny, weather_tiny, planes_tiny, train, valid, test, sizes):
    cfg = load_params(REPO / "params.yaml", overrides={"split.train": train, "split.valid": valid, "split.test": test})
    frame = build_features(flights_tiny, {"weather": weather_tiny, "planes": planes_tiny}, cfg)
    parts = split_by_window(frame, cfg.split, "time_hour")
    assert [len(parts[s]) for s in ("train", "valid", "test")] == sizes
