"""Promotion gate and champion history: the pure rule, and a registry round trip on a shrunk project."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest

from flightloop.config import GateCfg, ParamsError, load_params
from flightloop.registry import champion_stack, rollback_target
from tasks.gate import Scores, decide, score
from tests.conftest import REPO, make_project, project_env, run, set_params

CFG = GateCfg(metric="roc_auc", margin=0.01, slice_tolerance=0.02, min_slice_rows=2)


def s(overall: float, **slices: float) -> Scores:
    return Scores(overall, 100, {("carrier", k): (v, 50) for k, v in slices.items()})


@pytest.mark.parametrize(
    ("champion", "challenger", "promote", "why"),
    [
        (None, s(0.60), True, "no champion"),
        (s(0.70, AA=0.70), s(0.72, AA=0.71), True, "better by"),
        (s(0.70, AA=0.70), s(0.705, AA=0.71), False, "not more than margin"),
        (s(0.70, AA=0.70), s(0.60, AA=0.60), False, "not more than margin"),
        (s(0.70, AA=0.70, UA=0.70), s(0.75, AA=0.80, UA=0.65), False, "carrier=UA"),
        (s(0.70, AA=0.70, UA=0.70), s(0.75, AA=0.80, UA=0.69), True, "no slice worse"),
    ],
)
def test_decide_roc_auc(champion, challenger, promote, why):
    d = decide(champion, challenger, CFG)
    assert d.promote is promote and why in d.reason


def test_decide_lower_is_better_metric():
    cfg = GateCfg(metric="brier", margin=0.001, slice_tolerance=0.01)
    assert decide(s(0.20), s(0.15), cfg).promote
    refused = decide(s(0.15), s(0.20), cfg)
    assert not refused.promote and refused.improvement == pytest.approx(-0.05)


def test_score_skips_small_slices_and_computes_metric():
    y = np.array([0, 1] * 10)
    p = np.where(y == 1, 0.9, 0.1)
    groups = pd.DataFrame({"carrier": ["AA"] * 16 + ["ZZ"] * 4, "origin": ["EWR"] * 20})
    got = score(y, p, groups, GateCfg(min_slice_rows=5))
    assert got.overall == 1.0 and ("carrier", "AA") in got.slices and ("carrier", "ZZ") not in got.slices


def test_gate_params_reject_unknown_keys():
    with pytest.raises(ParamsError, match="gate.margn"):
        load_params(REPO / "params.yaml", {"gate.margn": 0.1})
    assert load_params(REPO / "params.yaml").gate.metric == "roc_auc"


def test_rollback_target_follows_the_champion_stack():
    ev = [
        {"action": "initial", "champion_before": None, "champion_after": 1},
        {"action": "refuse", "champion_before": 1, "champion_after": 1},
        {"action": "promote", "champion_before": 1, "champion_after": 3},
        {"action": "promote", "champion_before": 3, "champion_after": 4},
    ]
    assert champion_stack(ev) == [1, 3, 4] and rollback_target(ev, 4) == 3
    ev.append({"action": "rollback", "champion_before": 4, "champion_after": 3})
    assert rollback_target(ev, 3) == 1  # a second rollback goes further back, not forth again
    ev.append({"action": "rollback", "champion_before": 3, "champion_after": 1})
    assert rollback_target(ev, 1) is None


# -- registry round trip: a weak champion, a shuffled-label challenger, a better one, a rollback --------


def _py(project, *args, env=None):
    full = {**project_env(project), **(env or {})}
    proc = subprocess.run(["python", *args], cwd=project, env=full, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout


def _registry_state(project) -> dict:
    code = (
        "import json, mlflow; from flightloop import tracking; mlflow.set_tracking_uri(tracking.tracking_uri());"
        "c = mlflow.MlflowClient(); m = c.get_registered_model('flight-delay');"
        "vs = {v.version: v.tags for v in c.search_model_versions(\"name='flight-delay'\")};"
        "print(json.dumps({'aliases': {k: int(v) for k, v in m.aliases.items()}, 'versions': vs}))"
    )
    return json.loads(_py(project, "-c", code).strip().splitlines()[-1])


@pytest.mark.smoke
def test_gate_refuses_shuffled_promotes_better_and_rollback_restores(tmp_path):
    gate = {"gate.margin": 0.005, "gate.slice_tolerance": 0.05, "gate.min_slice_rows": 300}
    # v1: a deliberately weak champion (1 epoch on 5% of January)
    project = make_project(tmp_path, {"train.sample_frac": 0.05, "train.max_epochs": 1, **gate})
    run(["dvc", "repro"], project)
    first = json.loads((project / "reports" / "gate.json").read_text())
    assert first["promoted"] and first["action"] == "initial" and first["champion_version"] == 1

    # v2: trained on permuted labels -> refused, champion stays v1
    train = project / "data" / "prepared" / "train.parquet"
    shutil.copy2(train, tmp_path / "train.backup.parquet")
    frame = pd.read_parquet(train)
    frame["late"] = np.random.default_rng(0).permutation(frame["late"].to_numpy())
    frame.to_parquet(train, index=False)
    for stage in ("train", "evaluate", "register"):
        _py(project, "-m", f"tasks.{stage}")
    out = _py(project, "-m", "tasks.gate", env={"PREFECT__FLOW_RUN_ID": "flow-run-shuffled"})
    assert "v2 REFUSED" in out
    refused = json.loads((project / "reports" / "gate.json").read_text())
    assert not refused["promoted"] and refused["champion_version"] == 1 and refused["flow_run"] == "flow-run-shuffled"
    assert refused["challenger_score"] < refused["champion_score"] + 0.005
    # the record names the features whose permutation importance moved most (the shuffled-label model's fell)
    moved = refused["importance_movers"]
    features = load_params(project / "params.yaml").data.features
    assert len(moved) == 5 and {m["feature"] for m in moved} <= set(features), moved
    assert abs(moved[0]["change"]) >= abs(moved[-1]["change"]) and moved[0]["change"] == pytest.approx(
        moved[0]["challenger"] - moved[0]["champion"], abs=1e-4
    )

    # v3: real labels and more training, through dvc repro (train -> ... -> gate) -> promoted
    shutil.copy2(tmp_path / "train.backup.parquet", train)
    set_params(project, {"train.sample_frac": 0.3, "train.max_epochs": 2})
    run(["dvc", "repro"], project)
    promoted = json.loads((project / "reports" / "gate.json").read_text())
    assert promoted["promoted"] and promoted["version"] == 3 and promoted["champion_before"] == 1, promoted
    assert promoted["challenger_score"] > promoted["champion_score"] + 0.005

    state = _registry_state(project)
    assert state["aliases"]["champion"] == 3 and "challenger" not in state["aliases"]
    v2, v3 = state["versions"]["2"], state["versions"]["3"]
    assert v2["gate.action"] == "refuse" and "not more than margin" in v2["gate.reason"]
    assert {"gate.champion_score", "gate.challenger_score", "gate.window", "gate.margin", "gate.at"} <= set(v2)
    assert v3["gate.action"] == "promote" and v3["gate.flow_run"] == "manual"

    # rollback: one command puts v1 back, recorded the same way
    assert "champion v3 -> v1" in _py(project, "-m", "tasks.gate", "rollback", "--reason", "test")
    state = _registry_state(project)
    assert state["aliases"]["champion"] == 1 and state["versions"]["1"]["rollback.champion_before"] == "3"

    events = json.loads(_py(project, "-m", "tasks.gate", "history", "--json"))
    assert [(e["action"], e["version"], e["champion_after"]) for e in events] == [
        ("initial", 1, 1),
        ("refuse", 2, 1),
        ("promote", 3, 3),
        ("rollback", 1, 1),
    ]
    table = _py(project, "-m", "tasks.gate", "history")
    assert "refuse" in table and "promote" in table and "rollback" in table and "flow-run-shuffled" in table
    assert f"importance moved most: {moved[0]['feature']}" in table
