"""Stage 7, gate: promote the challenger to `champion` only when it beats the champion on the same window.

`decide` is the pure rule; `python -m tasks.gate` scores both versions, applies it, moves the alias and
records the decision on the version and in the registered model's champion history (tasks/registry.py)."""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from tasks import paths
from tasks.config import load_params, parse_section
from tasks.evaluate import classification_metrics

HIGHER_IS_BETTER = {"roc_auc": True, "pr_auc": True, "brier": False, "log_loss": False}
GATE_REPORT = paths.REPORTS / "gate.json"
DEFAULT_WINDOW = paths.PREPARED / "test.parquet"


class GateCfg(BaseModel):
    """params.yaml `gate:` section."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    metric: Literal["roc_auc", "pr_auc", "brier", "log_loss"] = "roc_auc"
    margin: float = Field(0.0, ge=0.0)  # challenger must be better by more than this
    slice_tolerance: float = Field(0.02, ge=0.0)  # a slice may get worse by at most this
    slices: tuple[str, ...] = ("carrier", "origin")
    min_slice_rows: int = Field(200, ge=1)  # smaller slices are too noisy to block on


def gate_cfg(extra: dict[str, Any]) -> GateCfg:
    """Validate `params.extra['gate']`; unknown keys are refused with their name."""
    return parse_section(GateCfg, extra.get("gate"), "gate")


@dataclass(frozen=True)
class Scores:
    """One model's metric on a window, overall and per slice value ((column, value) -> (metric, rows))."""

    overall: float
    rows: int
    slices: dict[tuple[str, str], tuple[float, int]] = field(default_factory=dict)


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str
    metric: str
    champion_score: float | None
    challenger_score: float
    improvement: float | None  # signed so that positive means the challenger is better
    margin: float
    worse_slices: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def metric_value(y: np.ndarray, p: np.ndarray, metric: str) -> float:
    return classification_metrics(y, p, 0.5)[metric]


def score(y: np.ndarray, p: np.ndarray, groups: pd.DataFrame, cfg: GateCfg) -> Scores:
    """The gate metric overall and for every slice value with at least `min_slice_rows` rows."""
    slices: dict[tuple[str, str], tuple[float, int]] = {}
    for col in cfg.slices:
        if col not in groups.columns:
            continue
        for value, idx in groups.groupby(col, dropna=False).indices.items():
            if len(idx) >= cfg.min_slice_rows:
                v = metric_value(y[idx], p[idx], cfg.metric)
                if not math.isnan(v):
                    slices[(col, str(value))] = (v, len(idx))
    return Scores(metric_value(y, p, cfg.metric), len(y), slices)


def _better_by(champion: float, challenger: float, metric: str) -> float:
    return challenger - champion if HIGHER_IS_BETTER[metric] else champion - challenger


def decide(champion: Scores | None, challenger: Scores, cfg: GateCfg) -> Decision:
    """Pure promotion rule: better overall by more than the margin and no slice worse beyond tolerance."""
    base = dict(metric=cfg.metric, challenger_score=challenger.overall, margin=cfg.margin)
    if champion is None:
        return Decision(
            True, "no champion yet: the first version becomes champion", champion_score=None, improvement=None, **base
        )
    if math.isnan(challenger.overall) or math.isnan(champion.overall):
        return Decision(
            False,
            f"{cfg.metric} undefined on this window (one class only?)",
            champion_score=champion.overall,
            improvement=None,
            **base,
        )
    gain = _better_by(champion.overall, challenger.overall, cfg.metric)
    worse = []
    for key, (new, rows) in sorted(challenger.slices.items()):
        if key in champion.slices:
            drop = -_better_by(champion.slices[key][0], new, cfg.metric)
            if drop > cfg.slice_tolerance:
                worse.append(
                    {
                        "column": key[0],
                        "value": key[1],
                        "champion": champion.slices[key][0],
                        "challenger": new,
                        "worse_by": drop,
                        "rows": rows,
                    }
                )
    common = dict(champion_score=champion.overall, improvement=gain, worse_slices=worse, **base)
    if gain <= cfg.margin:
        return Decision(
            False,
            f"{cfg.metric} {challenger.overall:.4f} vs champion {champion.overall:.4f}: "
            f"better by {gain:+.4f}, not more than margin {cfg.margin}",
            **common,
        )
    if worse:
        names = ", ".join(f"{w['column']}={w['value']} ({w['worse_by']:+.4f})" for w in worse[:5])
        return Decision(
            False,
            f"{cfg.metric} better by {gain:+.4f} but {len(worse)} slice(s) worse than "
            f"tolerance {cfg.slice_tolerance}: {names}",
            **common,
        )
    return Decision(
        True,
        f"{cfg.metric} {challenger.overall:.4f} vs champion {champion.overall:.4f}: "
        f"better by {gain:+.4f} > margin {cfg.margin}, no slice worse than "
        f"{cfg.slice_tolerance}",
        **common,
    )


def read_window(path: Path | str, label: str) -> pd.DataFrame:
    """A labelled window (Parquet or CSV) with the label column present."""
    path = Path(path)
    frame = pd.read_csv(path) if path.suffix == ".csv" else pd.read_parquet(path)
    if label not in frame.columns:
        raise ValueError(f"window {path} has no label column {label!r}")
    return frame[frame[label].notna()].reset_index(drop=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default=paths.PARAMS, type=Path)
    ap.add_argument("--registered", default=paths.REGISTERED, type=Path)
    ap.add_argument("--window", default=DEFAULT_WINDOW, type=Path, help="labelled rows to compare on")
    ap.add_argument("--version", type=int, help="challenger version (default: the one in --registered)")
    ap.add_argument("--out", default=GATE_REPORT, type=Path)
    args = ap.parse_args(argv)
    params = load_params(args.params)
    cfg = gate_cfg(params.extra)

    from tasks import registry

    name = params.register_.model_name
    version = args.version or json.loads(args.registered.read_text())["version"]
    url = registry.service_url(params.extra)
    result = registry.run_gate(name, int(version), args.window, params.data.label, cfg, notify_url=url)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=str))
    verdict = "PROMOTED" if result["promoted"] else "REFUSED"
    print(f"gate: {name} v{version} {verdict}: {result['reason']} -> champion v{result['champion_version']}")


if __name__ == "__main__":
    main()
