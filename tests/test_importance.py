"""Permutation importance (flightloop/importance.py): a planted signal ranks first, noise scores ~0, and
the gate's movers name the features whose importance changed most."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from flightloop.config import ModelCfg, TrainCfg
from flightloop.importance import movers, permutation_importance


def planted(rows: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """`strong` drives the label, `weak` a little, `noise` and the category `colour` not at all."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "colour": rng.choice(["red", "green", "blue"], rows),
            "strong": rng.normal(size=rows),
            "weak": rng.normal(size=rows),
            "noise": rng.normal(size=rows),
        }
    )
    logit = 2.5 * frame["strong"] + 0.7 * frame["weak"]
    return frame, (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(int)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The project's network, fitted through models.fit on the planted frame; its scoring function."""
    from models.fit import fit
    from models.packaged import predict_proba
    from models.preprocess import Preprocessor

    frame, y = planted(3000, seed=0)
    pre = Preprocessor.fit(frame, ("colour",), ("strong", "weak", "noise"))
    enc = lambda f, t: (*pre.transform(f), t.astype(np.float32))  # noqa: E731
    valid, y_valid = planted(1000, seed=1)
    train = TrainCfg(max_epochs=10, seed=0)
    net, _ = fit(
        {"train": enc(frame, y), "valid": enc(valid, y_valid)},
        pre.cardinalities,
        ModelCfg(hidden=(16,), dropout=0.0),
        train,
        Path(tmp_path_factory.mktemp("fit")),
    )
    return lambda f: predict_proba(net, *pre.transform(f))


def test_the_planted_feature_ranks_first_and_noise_is_near_zero(trained):
    test, y = planted(4000, seed=2)
    table = permutation_importance(trained, test, y, ["colour", "strong", "weak", "noise"], repeats=3, seed=0)
    by = table.set_index("feature")
    assert list(table["feature"][:2]) == ["strong", "weak"] and list(table["rank"]) == [1, 2, 3, 4]
    assert by.loc["strong", "importance"] > 0.2 and by.loc["weak", "importance"] > 0.01
    for unused in ("noise", "colour"):  # the network sees them, the label does not depend on them
        assert abs(by.loc[unused, "importance"]) < 0.005, table


def test_the_same_seed_gives_the_same_table_and_a_sample_is_seeded():
    frame, y = planted(500, seed=3)
    predict = lambda f: 1 / (1 + np.exp(-(f["strong"] + 0.1 * f["weak"]).to_numpy()))  # noqa: E731
    one = permutation_importance(predict, frame, y, ["strong", "weak", "noise"], repeats=2, seed=7, max_rows=300)
    two = permutation_importance(predict, frame, y, ["strong", "weak", "noise"], repeats=2, seed=7, max_rows=300)
    pd.testing.assert_frame_equal(one, two)
    assert one.set_index("feature").loc["noise", "importance"] == 0.0  # a column the scorer ignores


def test_a_window_with_one_class_gives_undefined_importance_not_an_error():
    frame, _ = planted(50, seed=4)
    table = permutation_importance(lambda f: f["strong"].to_numpy(), frame, np.zeros(50), ["strong"], repeats=2)
    assert table["importance"].isna().all()


def test_movers_are_the_largest_changes_either_way():
    champion = pd.DataFrame({"feature": ["a", "b", "c", "d"], "importance": [0.30, 0.10, 0.02, 0.0]})
    challenger = pd.DataFrame({"feature": ["a", "b", "c", "e"], "importance": [0.05, 0.12, 0.02, 0.08]})
    got = movers(champion, challenger, top=3)
    assert [m["feature"] for m in got] == ["a", "e", "b"]
    assert got[0] == {"feature": "a", "champion": 0.3, "challenger": 0.05, "change": -0.25}
    assert movers(champion, challenger, top=0) == []


class Fixed:
    """A scorer as the gate loads one: its features and a scoring function of raw rows."""

    def __init__(self, weights: dict[str, float]):
        self.features, self.weights = list(weights), weights

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        logit = sum(w * frame[c].to_numpy() for c, w in self.weights.items())
        return 1 / (1 + np.exp(-logit))


def test_the_gate_names_the_feature_whose_importance_moved_most():
    from flightloop.config import ImportanceCfg
    from tasks.gate import importance_movers

    frame, y = planted(2000, seed=5)
    champion = Fixed({"strong": 2.5, "weak": 0.0, "noise": 0.0})  # ignores `weak`
    challenger = Fixed({"strong": 2.5, "weak": 0.7, "noise": 0.0})  # learnt it
    moved = importance_movers(champion, challenger, frame, y, ImportanceCfg(repeats=2), top=2)
    assert moved[0]["feature"] == "weak" and moved[0]["champion"] == 0.0 and moved[0]["change"] > 0.01
    assert len(moved) == 2 and "noise" not in [m["feature"] for m in moved[:1]]
