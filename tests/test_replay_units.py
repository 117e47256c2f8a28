import os

import numpy as np
import pandas as pd
import pytest

from monitoring.loop import new_labelled_rows
from monitoring.policy import retrain_split
from monitoring.replay import estimate_accuracy, label_counterparts, retained_improvement, rows_in, windows


def test_weekly_windows_tile_the_range():
    ws = windows("2013-07-01", "2013-07-31", 7)
    assert [w.window_id for w in ws] == ["2013-07-01", "2013-07-08", "2013-07-15", "2013-07-22", "2013-07-29"]
    assert ws[-1].end == pd.Timestamp("2013-08-01")  # last window is short
    assert all(a.end == b.start for a, b in zip(ws, ws[1:]))


def test_window_length_must_be_positive():
    with pytest.raises(ValueError, match="at least one day"):
        windows("2013-07-01", "2013-07-31", 0)


@pytest.mark.parametrize("delay, visible", [(0, 4), (1, 3), (2.5, 2), (10, 0)])
def test_a_retrain_never_takes_rows_whose_label_has_not_arrived(delay, visible):
    times = pd.to_datetime(["2013-07-01 06:00", "2013-07-02 06:00", "2013-07-03 06:00", "2013-07-04 06:00"])
    frame = pd.DataFrame({"time_hour": times, "late": [0, 1, 0, 1]})
    now = pd.Timestamp("2013-07-05")
    horizon = now - pd.Timedelta(days=delay)  # what a decision at `now` carries (monitoring.policy.decide)
    seen = new_labelled_rows(frame, "time_hour", None, horizon, [])
    assert len(seen) == visible
    assert (seen["time_hour"] + pd.Timedelta(days=delay) <= now).all()


def test_a_retrain_skips_what_the_data_holds_and_every_quarantined_window():
    times = pd.date_range("2013-07-01", periods=10, freq="D")
    frame = pd.DataFrame({"time_hour": times, "late": 0})
    kept = [(pd.Timestamp("2013-07-05"), pd.Timestamp("2013-07-07"))]
    seen = new_labelled_rows(frame, "time_hour", pd.Timestamp("2013-07-02"), pd.Timestamp("2013-07-09"), kept)
    assert seen["time_hour"].dt.day.tolist() == [3, 4, 7, 8]


def test_rows_in_is_half_open():
    frame = pd.DataFrame({"t": pd.to_datetime(["2013-07-01 00:00", "2013-07-07 23:00", "2013-07-08 00:00"])})
    assert len(rows_in(frame, "t", pd.Timestamp("2013-07-01"), pd.Timestamp("2013-07-08"))) == 2


@pytest.mark.parametrize(
    "months, train",
    [(3, ["2013-05-18", "2013-08-17"]), (None, ["2013-01-01", "2013-08-17"])],
)
def test_retrain_split_sliding_and_expanding(months, train):
    split = retrain_split(
        pd.Timestamp("2013-09-01"), gate_days=7, valid_days=7, train_months=months, first_day="2013-01-01"
    )
    assert split["test"] == ("2013-08-25", "2013-08-31")
    assert split["valid"] == ("2013-08-18", "2013-08-24")
    assert split["train"] == tuple(train)


def test_policies_replayed_at_once_share_the_cores(monkeypatch):
    from flows.replay import stage_threads

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    with stage_threads(2) as share:
        assert share.threads == 4 and os.environ["OMP_NUM_THREADS"] == "4"  # what stage subprocesses inherit
    assert "OMP_NUM_THREADS" not in os.environ  # restored after the replay
    with stage_threads(16) as share:
        assert share.threads == 1 and os.environ["OMP_NUM_THREADS"] == "1"
    with stage_threads(1) as share:
        assert share.threads == 8 and "OMP_NUM_THREADS" not in os.environ  # one policy at a time: all cores
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    with stage_threads(2) as share:
        assert share.threads == 3 and os.environ["OMP_NUM_THREADS"] == "3"  # the user's setting wins
        share.finished()
        assert share.threads == 3
    assert os.environ["OMP_NUM_THREADS"] == "3"


def test_a_finished_policy_leaves_its_cores_to_those_still_running(monkeypatch):
    """`never` ends long before a retraining policy: the stages started after that get its cores."""
    from flows.replay import at_once, stage_threads

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("os.cpu_count", lambda: 4)
    with stage_threads(2, jobs=3) as share:  # three jobs, two at a time
        assert share.threads == 2
        share.finished()
        assert share.threads == 2  # two jobs are left: still two running
        share.finished()
        assert share.threads == 4 and "OMP_NUM_THREADS" not in os.environ  # the last one alone: every core
    assert "OMP_NUM_THREADS" not in os.environ

    import threading

    long_started, first_done = threading.Event(), threading.Event()
    seen: dict[str, str | None] = {}

    def long() -> str:
        seen["before"] = os.environ.get("OMP_NUM_THREADS")
        long_started.set()
        assert first_done.wait(10)
        seen["after"] = os.environ.get("OMP_NUM_THREADS")  # what its next stage would inherit
        return "long"

    def short() -> str:
        assert long_started.wait(10)
        return "short"

    with stage_threads(2, jobs=2) as share:
        original = share.finished

        def finished() -> None:
            original()
            first_done.set()

        share.finished = finished
        out = at_once([long, short], 2, share)
    assert out == ["long", "short"]  # results in the order of the calls
    assert seen == {"before": "2", "after": None}  # alone after the short one ended: every core


def _request(day: str):
    from flightloop.config import load_params
    from monitoring.policy import retrain_request
    from tests.conftest import REPO

    params = load_params(REPO / "params.yaml")
    request = retrain_request(
        params.policy,
        model_name="flight-delay",
        model_version=1,
        window_id=day,
        now=pd.Timestamp(day).to_pydatetime(),
        kind="data_drift",
        reasons=["test"],
        first_day="2013-01-01",
    )
    return params, request


def test_run_retrain_records_a_failure_with_its_reason_and_runs_each_decision_once(tmp_path):
    from monitoring.loop import run_retrain
    from monitoring.report import StateStore

    params, request = _request("2013-07-15")
    store = StateStore(tmp_path / "state.json")
    rows = pd.DataFrame({"time_hour": pd.date_range("2013-07-01", periods=20, freq="D"), "late": 0})
    ingested, trained = [], []

    def ingest(batch):
        ingested.append(pd.read_parquet(batch))

    def failing(split):
        trained.append(split)
        raise OSError("No space left on device")

    hooks = dict(labelled=lambda horizon: rows, ingest=ingest, notify=lambda: "reloaded", emit=False)
    with pytest.raises(OSError):
        run_retrain(request, params, tmp_path, store, train=failing, flow_run="run-1", **hooks)
    state = store.read()
    assert trained == [request.split] and ingested[0]["time_hour"].max() < pd.Timestamp(request.horizon)
    assert state.last_failure.reason == "OSError: No space left on device" and state.last_retrain_at is None
    assert state.retrains[request.key].status == "failed" and state.pending is None

    again = run_retrain(request, params, tmp_path, store, train=failing, **hooks)  # the same decision again
    assert "failed already" in again["skipped"] and len(trained) == 1

    _, later = _request("2013-07-22")  # a later decision (after the backoff) runs, and completes
    done = run_retrain(later, params, tmp_path, store, train=lambda split: {"gate": {"promoted": True}}, **hooks)
    assert done["promoted"] and done["notified"] == "reloaded"
    state = store.read()
    assert state.last_retrain_at == later.window_end and state.last_failure is None
    assert state.retrains[later.key].status == "completed"


# --- paired evidence: each policy against `never`, with block-bootstrap intervals --------------------------

WEEKS = [w.window_id for w in windows("2013-07-01", "2013-12-29", 7)]  # 26 weeks: 14 up to TUNE, 12 after
TUNE = "2013-09-30"
BOOT = {"resamples": 2000, "block": 4, "seed": 0}


def _table(aucs: dict[tuple[str, int], np.ndarray], retrains: dict[tuple[str, int], int] | None = None):
    """A windows.csv-like table: AUC per (policy, seed) and window; Brier moves with it (AUC up, Brier down)."""
    rows = []
    for (policy, seed), values in aucs.items():
        for i, (w, v) in enumerate(zip(WEEKS, values, strict=True)):
            retrained = i < (retrains or {}).get((policy, seed), 0)
            rows.append(
                {
                    "policy": policy,
                    "seed": seed,
                    "window": w,
                    "roc_auc": v,
                    "brier": 0.25 - v / 4,
                    "retrained": retrained,
                    "promoted": retrained,
                    "train_seconds": 10.0 * retrained,
                }
            )
    return pd.DataFrame(rows)


def _weeks(rng, sd=0.03):
    """A season: AUC of `never` swinging from week to week far more than the policies differ."""
    return 0.72 + rng.normal(0, sd, len(WEEKS))


def _row(evidence, policy, part, metric):
    hit = evidence[(evidence["policy"] == policy) & (evidence["part"] == part) & (evidence["metric"] == metric)]
    assert len(hit) == 1
    return hit.iloc[0]


@pytest.mark.parametrize("metric, true", [("roc_auc", 0.02), ("brier", -0.005)])
def test_a_policy_better_in_every_window_has_an_interval_that_excludes_0_and_holds_the_truth(metric, true):
    from monitoring.replay import evidence_text, vs_base

    rng = np.random.default_rng(1)
    never = _weeks(rng)
    table = _table({("never", 0): never, ("drift", 0): never + 0.02 + rng.normal(0, 0.005, len(WEEKS))})
    evidence = vs_base(table, TUNE, **BOOT)
    row = _row(evidence, "drift", "all", metric)
    assert row["ci_low"] <= true <= row["ci_high"] and row["diff"] == pytest.approx(true, abs=0.003)
    assert row["excludes_zero"] and (row["ci_low"] > 0 or row["ci_high"] < 0)
    assert row["windows"] == len(WEEKS) and row["seeds"] == 1
    [line] = [t for t in evidence_text(evidence) if t.startswith(f"drift vs never, all, {metric}")]
    assert "excludes 0: drift is better" in line


def test_pure_noise_has_an_interval_that_holds_0():
    from monitoring.replay import evidence_text, vs_base

    rng = np.random.default_rng(2)
    never = _weeks(rng)
    noise = rng.normal(0, 0.01, len(WEEKS))
    table = _table({("never", 0): never, ("drift", 0): never + noise - noise.mean()})  # no difference on average
    evidence = vs_base(table, TUNE, **BOOT)
    for metric, width in (("roc_auc", 0.004), ("brier", 0.001)):  # ~2 x 1.96 x sd / sqrt(26); Brier moves 1/4
        row = _row(evidence, "drift", "all", metric)
        assert row["ci_low"] < 0 < row["ci_high"] and not row["excludes_zero"]
        assert row["ci_high"] - row["ci_low"] > width  # an honest width, not a point
    assert all("contains 0" in t for t in evidence_text(evidence) if ", all, " in t)


def test_pairing_by_window_removes_what_both_policies_saw():
    """`drift` equals `never` in every window, and both swing with the weather: the paired difference is 0
    with an interval of width ~0, though each policy's own mean moves a lot between resamples. Rows in
    another order pair the same (by window, not by position)."""
    from monitoring.replay import block_bootstrap_ci, vs_base

    rng = np.random.default_rng(3)
    never = _weeks(rng, sd=0.05)
    table = _table({("never", 0): never, ("drift", 0): never.copy()}).sample(frac=1, random_state=0)
    row = _row(vs_base(table, TUNE, **BOOT), "drift", "all", "roc_auc")
    assert row["diff"] == 0 and row["ci_high"] - row["ci_low"] < 1e-12 and not row["excludes_zero"]
    low, high = block_bootstrap_ci(never, **BOOT)  # one policy alone: the season's swing
    assert high - low > 0.01


def test_seeds_are_paired_then_averaged_per_window():
    """Seeds 0-2 of `drift` are better by 0.01, 0.02, 0.03 every window: 0.02 over 3 seeds. A seed
    `never` was not replayed with has nothing to pair with and is left out."""
    from monitoring.replay import vs_base

    rng = np.random.default_rng(4)
    aucs, retrains = {}, {}
    for seed, gain in [(0, 0.01), (1, 0.02), (2, 0.03)]:
        aucs["never", seed] = _weeks(rng)  # each seed its own never
        aucs["drift", seed] = aucs["never", seed] + gain
        retrains["drift", seed] = seed + 1  # 1, 2, 3 retrains (all in the tuning half): 2 per seed
    aucs["drift", 9] = _weeks(rng) + 0.5  # no `never` with seed 9
    evidence = vs_base(_table(aucs, retrains), TUNE, **BOOT)
    row = _row(evidence, "drift", "all", "roc_auc")
    assert row["diff"] == pytest.approx(0.02) and row["seeds"] == 3 and row["windows"] == len(WEEKS)
    assert row["ci_low"] == pytest.approx(0.02) and row["ci_high"] == pytest.approx(0.02)  # same gain every week
    assert row["retrains"] == 2 and row["diff_per_retrain"] == pytest.approx(0.01)
    held = _row(evidence, "drift", "held_out_half", "roc_auc")
    assert held["retrains"] == 0 and np.isnan(held["diff_per_retrain"])


def test_tuning_and_held_out_halves_are_reported_apart():
    from monitoring.replay import vs_base

    rng = np.random.default_rng(5)
    never = _weeks(rng)
    tuned = np.array([w <= TUNE for w in WEEKS])
    table = _table({("never", 0): never, ("drift", 0): never + 0.03 * tuned})  # better only where it was tuned
    evidence = vs_base(table, TUNE, **BOOT)
    tuning, held, whole = (_row(evidence, "drift", p, "roc_auc") for p in ("tuning_half", "held_out_half", "all"))
    assert (tuning["windows"], held["windows"], whole["windows"]) == (14, 12, 26)
    assert tuning["diff"] == pytest.approx(0.03) and tuning["excludes_zero"]
    assert held["diff"] == pytest.approx(0.0) and not held["excludes_zero"]
    assert whole["diff"] == pytest.approx(0.03 * 14 / 26)


def test_no_never_no_evidence():
    from monitoring.replay import EVIDENCE_COLUMNS, vs_base

    table = _table({("drift", 0): _weeks(np.random.default_rng(6))})
    evidence = vs_base(table, TUNE, **BOOT)
    assert evidence.empty and list(evidence.columns) == EVIDENCE_COLUMNS


def test_blocks_keep_spells_together_and_the_interval_is_reproducible():
    """Weeks that move together (spells of 4): resampling single weeks understates the uncertainty; blocks
    of 4 do not. The same seed gives the same interval."""
    from monitoring.replay import block_bootstrap_ci

    spells = np.repeat(np.random.default_rng(7).normal(0, 0.02, 8), 4)
    single = block_bootstrap_ci(spells, resamples=2000, block=1, seed=0)
    blocks = block_bootstrap_ci(spells, resamples=2000, block=4, seed=0)
    assert blocks[1] - blocks[0] > 1.5 * (single[1] - single[0])
    assert block_bootstrap_ci(spells, resamples=2000, block=4, seed=0) == blocks
    assert block_bootstrap_ci(spells, resamples=2000, block=4, seed=1) != blocks


def test_a_block_longer_than_the_series_still_gives_an_interval():
    """A block as long as the series would only rotate it (width 0): it is cut to half the series."""
    from monitoring.replay import block_bootstrap_ci

    low, high = block_bootstrap_ci(np.array([0.0, 0.01, 0.05, -0.02]), resamples=500, block=4, seed=0)
    assert high - low > 0.01  # rotations alone differ by float rounding only
    assert np.isnan(block_bootstrap_ci(np.array([]), resamples=500, block=4, seed=0)[0])


def test_policy_summary_averages_seeds_and_reports_their_spread():
    from monitoring.replay import policy_summary

    ones = np.full(len(WEEKS), 0.7)
    aucs = {("never", 0): ones, ("never", 1): ones + 0.02, ("drift", 0): ones, ("drift", 1): ones}
    summary = policy_summary(_table(aucs, {("drift", 0): 2, ("drift", 1): 4})).set_index("policy")
    assert summary.loc["never", "windows"] == len(WEEKS) and summary.loc["never", "seeds"] == 2
    assert summary.loc["never", "mean_auc"] == pytest.approx(0.71)
    assert summary.loc["never", "auc_seed_sd"] == pytest.approx(0.02 / np.sqrt(2))
    assert summary.loc["drift", "auc_seed_sd"] == 0 and summary.loc["drift", "retrains"] == 3  # per seed
    one_seed = policy_summary(_table({("never", 0): ones}).drop(columns="seed"))  # a table from before seeds
    assert one_seed.loc[0, "seeds"] == 1 and np.isnan(one_seed.loc[0, "auc_seed_sd"])


# --- seeds: names and config ----------------------------------------------------------------------------


def test_a_one_seed_replay_keeps_its_names_and_several_seeds_get_their_own():
    from flows.replay import pick_seeds, seed_suffix

    assert seed_suffix(0, [0]) == "" and seed_suffix(2, [2]) == ""
    assert [seed_suffix(s, [0, 1, 2]) for s in (0, 1, 2)] == ["-s0", "-s1", "-s2"]
    assert pick_seeds((0, 1, 2), None) == [0, 1, 2] and pick_seeds((0, 1, 2), 1) == [0]
    for count in (0, 4):
        with pytest.raises(ValueError, match="replay.seeds has 3"):
            pick_seeds((0, 1, 2), count)


def test_replay_seeds_and_bootstrap_come_from_params_yaml():
    from flightloop.config import load_params
    from tests.conftest import REPO

    params = load_params(REPO / "params.yaml")
    rcfg = params.replay_cfg()
    assert len(rcfg.seeds) >= 3 and params.replay_cfg(quick=True).seeds == (0,)  # --quick: one seed
    assert rcfg.bootstrap.resamples >= 1000 and rcfg.bootstrap.block_windows > 1


@pytest.mark.parametrize(
    "override, message",
    [
        ({"replay.seeds": []}, "replay.seeds"),
        ({"replay.seeds": [0, 1, 1]}, "seeds repeat"),
        ({"replay.seeds": [-1]}, ">= 0"),
        ({"replay.seeds": "0"}, "replay.seeds"),
        ({"replay.bootstrap.resamples": 10}, "replay.bootstrap.resamples"),
        ({"replay.bootstrap.block_windows": 0}, "replay.bootstrap.block_windows"),
        ({"replay.bootstrap.blocks": 4}, "replay.bootstrap.blocks"),
        ({"replay.bootstrap": {"resamples": 2000, "block_windows": 4}}, "replay.bootstrap.seed"),
    ],
)
def test_bad_replay_seeds_and_bootstrap_are_refused(override, message):
    from flightloop.config import ParamsError, load_params
    from tests.conftest import REPO

    with pytest.raises(ParamsError, match=message):
        load_params(REPO / "params.yaml", overrides=override)


@pytest.mark.parametrize("count, suffixes", [(None, ["-s0", "-s1", "-s2"]), (1, [""])])
def test_the_replay_runs_every_policy_per_seed_and_writes_the_evidence(tmp_path, monkeypatch, count, suffixes):
    """The flow's wiring with its steps stubbed (no training, no service): one initial champion per seed
    trained with train.seed + seed, a workspace and model per policy and seed (a one-seed replay keeps the
    names of a replay before seeds), the `seed` column, evidence.csv, summary.json and the artifacts."""
    import json
    import logging

    import mlflow

    import flows.replay as fr
    from flightloop.config import load_params
    from tests.conftest import REPO

    rcfg = load_params(REPO / "params.yaml").replay_cfg()
    n_weeks = len(windows(rcfg.start, rcfg.end, rcfg.window_days))
    made, cloned, copied, artifacts = {}, {}, [], {}
    versions = iter(range(7, 100))

    def make_workspace(root, dest, overrides):
        dest.mkdir(parents=True)
        made[dest.name] = overrides
        return dest

    def clone_workspace(source, dest, overrides):
        cloned[dest.name] = (source.name, overrides["register.model_name"])
        return dest

    def replay_policy(policy, workspace, rcfg, labels, progress, seed):
        k, gain = {"never": (0, 0.0), "monthly": (1, 0.005), "drift": (2, 0.02)}[policy]
        season = 0.72 + np.random.default_rng(seed).normal(0, 0.03, n_weeks)  # the same for every policy
        own = np.random.default_rng([seed, k]).normal(0, 0.002, n_weeks)  # each policy's own noise
        weeks = [w.window_id for w in windows(rcfg.start, rcfg.end, rcfg.window_days)]
        return [
            {
                "policy": policy,
                "seed": seed,
                "window": w,
                "roc_auc": a + gain,
                "brier": 0.2 - gain / 4,
                "retrained": gain > 0 and i % 8 == 3,
                "promoted": False,
                "train_seconds": 1.0,
            }
            for i, (w, a) in enumerate(zip(weeks, season + own, strict=True))
        ]

    monkeypatch.setattr(fr, "get_run_logger", lambda: logging.getLogger("replay-test"))
    monkeypatch.setattr(fr, "make_workspace", make_workspace)
    monkeypatch.setattr(fr, "clone_workspace", clone_workspace)
    monkeypatch.setattr(fr, "training", lambda params, project_dir: {"registered": {"version": next(versions)}})
    monkeypatch.setattr(fr, "register_copy", lambda base, version, name: copied.append((base, version, name)))
    monkeypatch.setattr(fr, "replay_policy", replay_policy)
    monkeypatch.setattr(fr, "SourceLabels", lambda data: None)
    monkeypatch.setattr(
        fr, "create_table_artifact", lambda key, table, description: artifacts.update({key: description})
    )
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        result = fr.replay.fn(project_dir=str(REPO), out_dir=str(tmp_path / "out"), seeds=count)
    finally:
        mlflow.set_tracking_uri(None)  # tracking.setup set it process-wide

    seeds = list(rcfg.seeds[: count or len(rcfg.seeds)])
    assert result["seeds"] == seeds and len(seeds) == len(suffixes)
    assert {name: (o["register.model_name"], o["train.seed"]) for name, o in made.items()} == {
        f"base{x}": (f"flight-delay-replay-base{x}", 42 + s) for s, x in zip(seeds, suffixes, strict=True)
    }
    assert cloned == {
        f"{p}{x}": (f"base{x}", f"flight-delay-replay-{p}{x}") for x in suffixes for p in ("never", "monthly", "drift")
    }
    base_version = {f"flight-delay-replay-base{x}": 7 + i for i, x in enumerate(suffixes)}
    assert all(
        base_version[base] == v and name.endswith(base[len("flight-delay-replay-base") :]) for base, v, name in copied
    )

    out = tmp_path / "out"
    table = pd.read_csv(out / "windows.csv")
    assert sorted(table["seed"].unique()) == seeds and len(table) == n_weeks * 3 * len(seeds)
    evidence = pd.read_csv(out / "evidence.csv")
    assert len(evidence) == 2 * 3 * 2 and (evidence["seeds"] == len(seeds)).all()
    drift = _row(evidence, "drift", "all", "roc_auc")
    assert drift["excludes_zero"] and drift["ci_low"] <= 0.02 <= drift["ci_high"] and drift["windows"] == n_weeks
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["vs_never"]) == 12 and summary["bootstrap"]["block_windows"] == rcfg.bootstrap.block_windows
    assert any(
        "drift vs never, all, roc_auc" in t and "excludes 0: drift is better" in t for t in summary["vs_never_text"]
    )
    assert "excludes 0" in artifacts["replay-evidence"] and "replay-summary" in artifacts
    assert {"replay.png", "replay.html", "summary.csv"} <= {p.name for p in out.iterdir()}


def test_estimate_accuracy_per_policy():
    table = pd.DataFrame(
        {
            "policy": ["never"] * 3 + ["drift"] * 3,
            "roc_auc": [0.70, 0.60, 0.80, 0.7, 0.6, 0.8],
            "est_auc": [0.72, 0.61, 0.77, 0.7, np.nan, 0.75],  # a window without an estimate is left out
            "brier": [0.20, 0.10, 0.15, 0.2, 0.1, 0.15],
            "est_brier": [0.19, 0.16, 0.13, 0.2, np.nan, 0.1],
        }
    )
    acc = estimate_accuracy(table)
    assert acc["never"]["windows"] == 3 and acc["drift"]["windows"] == 2
    assert acc["never"]["auc_mae"] == pytest.approx(0.02) and acc["never"]["auc_bias"] == pytest.approx(0.0)
    assert acc["never"]["auc_spearman"] == pytest.approx(1.0) and acc["never"]["brier_spearman"] == pytest.approx(0.5)
    assert acc["never"]["brier_mae"] == pytest.approx(0.03)


def test_the_estimate_trigger_is_compared_with_the_label_trigger_it_stands_in_for():
    triggers = {
        "never": ["never"],
        "drift": ["data_drift", "performance"],
        "performance": ["performance"],
        "estimated": ["estimated_performance"],
        "drift-estimated": ["estimated_performance", "data_drift"],
        "lonely": ["estimated_performance", "schedule"],  # no replayed counterpart: not compared
    }
    assert label_counterparts(triggers) == {"estimated": "performance", "drift-estimated": "drift"}


def test_share_of_the_label_triggers_gain_the_estimate_trigger_keeps():
    summary = pd.DataFrame(
        {
            "policy": ["never", "performance", "estimated"],
            "mean_auc": [0.70, 0.72, 0.717],
            "mean_brier": [0.170, 0.160, 0.165],
            "retrains": [0, 4, 2],
        }
    )
    kept = retained_improvement(summary, "estimated", reference="performance")
    assert kept["auc_kept"] == pytest.approx(0.85)
    assert kept["brier_kept"] == pytest.approx(0.5)
    assert kept["retrain_share"] == pytest.approx(0.5)
