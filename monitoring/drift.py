"""Drift, data quality and performance of one window of production data against the champion's reference.

Pure: DataFrames and typed config in, a JSON-serialisable `WindowSummary` out. The figures come from
Evidently's own stat tests (the functions its `ValueDrift` metric calls), run on a seeded sample of the
reference that is prepared once per champion (`build_reference`); the Evidently `Snapshot` for the HTML
report is built separately (`drift_report`) because its plot rendering alone costs seconds per window.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict

from flightloop.config import DataCfg, MonitoringCfg
from monitoring.estimate import Calibrator, EstimatedPerformance, estimate


class _Out(BaseModel):
    model_config = ConfigDict(frozen=True)


class DriftFigures(_Out):
    share: float  # drifted features / checked features
    drifted: list[str]
    scores: dict[str, float]
    methods: dict[str, str]
    threshold: float  # monitoring.drift_threshold, the floor
    thresholds: dict[str, float]  # per feature: the floor, or higher where calibrated on the reference
    checked: int


class ScoreDrift(_Out):
    score: float
    detected: bool
    method: str
    threshold: float


class QualityFigures(_Out):
    missing_share: dict[str, float]
    missing_increase: dict[str, float]  # current missing share minus the reference's
    unseen_share: dict[str, float]  # rows whose category the reference never had
    unseen_values: dict[str, list[str]]
    out_of_range_share: dict[str, float]


class PerformanceFigures(_Out):
    rows: int
    roc_auc: float
    brier: float
    log_loss: float
    positive_rate: float
    champion: dict[str, float]  # the champion's own test metrics
    auc_drop: float | None
    brier_rise: float | None
    log_loss_rise: float | None


class WindowSummary(_Out):
    window_id: str
    start: str
    end: str
    model_name: str | None
    model_version: int | None
    rows: int
    rows_used: int  # current rows the drift tests saw (sampled above monitoring.current_max_rows)
    reference_rows: int
    labelled_rows: int
    drift: DriftFigures
    score_drift: ScoreDrift | None
    quality: QualityFigures
    performance: PerformanceFigures | None
    estimated: EstimatedPerformance | None = None  # from the scores alone (monitoring/estimate.py), labels or not

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def key_figures(self) -> dict[str, float]:
        """Flat numbers for MLflow metrics and the Prefect table."""
        out = {
            "rows": float(self.rows),
            "labelled_rows": float(self.labelled_rows),
            "drift_share": self.drift.share,
            "drifted_features": float(len(self.drift.drifted)),
            "max_missing_increase": max(self.quality.missing_increase.values(), default=0.0),
            "max_unseen_share": max(self.quality.unseen_share.values(), default=0.0),
            "max_out_of_range_share": max(self.quality.out_of_range_share.values(), default=0.0),
        }
        if self.score_drift:
            out["score_drift"] = self.score_drift.score
        if self.performance:
            p = self.performance
            out.update(roc_auc=p.roc_auc, brier=p.brier, log_loss=p.log_loss)
            out.update({k: v for k, v in (("auc_drop", p.auc_drop), ("brier_rise", p.brier_rise)) if v is not None})
        if self.estimated:
            e = self.estimated
            out.update(est_roc_auc=e.roc_auc, est_brier=e.brier)
            out.update(
                {f"est_{k}": v for k, v in (("auc_drop", e.auc_drop), ("brier_rise", e.brier_rise)) if v is not None}
            )
        out.update({f"drift.{k}": v for k, v in self.drift.scores.items()})
        return out


@dataclass(frozen=True)
class Reference:
    """The champion's reference, prepared once: a seeded sample plus the statistics quality checks need."""

    sample: pd.DataFrame  # feature columns (+ score when known), at most reference_max_rows rows
    rows: int
    categorical: tuple[str, ...]
    numeric: tuple[str, ...]
    drift_features: tuple[str, ...]
    missing_share: dict[str, float]
    categories: dict[str, frozenset[str]]
    bounds: dict[str, tuple[float, float]]  # allowed [lo, hi] per numeric feature, tolerance included
    has_scores: bool
    thresholds: dict[str, float]  # drift threshold per drift feature
    _nonnull: dict[str, pd.Series] = field(default_factory=dict, repr=False)


def _sample(frame: pd.DataFrame, max_rows: int, seed: int) -> pd.DataFrame:
    return frame.sample(max_rows, random_state=seed) if len(frame) > max_rows else frame


def build_reference(
    frame: pd.DataFrame,
    data: DataCfg,
    cfg: MonitoringCfg,
    scores: np.ndarray | pd.Series | None = None,
) -> Reference:
    """Reference from the champion's training feature rows; `scores` (aligned with `frame`) or a
    `cfg.score_column` in `frame` gives the reference for score drift."""
    missing = [c for c in data.features if c not in frame.columns]
    if missing:
        raise ValueError(f"reference lacks feature columns: {missing}")
    keep = list(data.features)
    ref = frame[keep].copy()
    if scores is not None:
        if len(scores) != len(frame):
            raise ValueError(f"{len(scores)} reference scores for {len(frame)} reference rows")
        ref[cfg.score_column] = np.asarray(scores, dtype=np.float64)
    elif cfg.score_column in frame.columns:
        ref[cfg.score_column] = frame[cfg.score_column].to_numpy(dtype=np.float64)
    has_scores = cfg.score_column in ref.columns
    sample = _sample(ref, cfg.reference_max_rows, cfg.seed).reset_index(drop=True)

    bounds = {}
    for col in data.numeric:
        values = frame[col].dropna()
        if values.empty:
            continue
        lo, hi = float(values.min()), float(values.max())
        pad = cfg.range_tolerance * (hi - lo)
        bounds[col] = (lo - pad, hi + pad)
    drift_features = tuple(c for c in data.features if c not in cfg.exclude_features)
    nonnull = {c: _clean(sample[c]) for c in [*drift_features, *([cfg.score_column] if has_scores else [])]}
    if cfg.calibrate_days:
        thresholds = calibrated_thresholds(frame, nonnull, drift_features, data, cfg)
    else:
        thresholds = {c: cfg.drift_threshold for c in drift_features}
    return Reference(
        sample=sample,
        rows=len(frame),
        categorical=tuple(data.categorical),
        numeric=tuple(data.numeric),
        drift_features=drift_features,
        missing_share={c: float(frame[c].isna().mean()) for c in data.features},
        categories={c: frozenset(frame[c].dropna().astype(str).unique()) for c in data.categorical},
        bounds={c: b for c, b in bounds.items() if c not in cfg.exclude_features},
        has_scores=has_scores,
        thresholds=thresholds,
        _nonnull=nonnull,
    )


def calibrated_thresholds(
    frame: pd.DataFrame, nonnull: dict[str, pd.Series], features: tuple[str, ...], data: DataCfg, cfg: MonitoringCfg
) -> dict[str, float]:
    """Per feature, the largest drift score of a `cfg.calibrate_days`-day slice of the reference rows
    against the reference sample (never below `cfg.drift_threshold`): the reference's own spread."""
    if data.time_column not in frame.columns:
        raise ValueError(f"monitoring.calibrate_days needs the time column {data.time_column!r} in the reference rows")
    t = pd.to_datetime(frame[data.time_column])
    slot = ((t - t.min()) // pd.Timedelta(days=cfg.calibrate_days)).to_numpy()
    sizes = pd.Series(slot).value_counts()
    slices = sorted(sizes.index[sizes >= 0.5 * sizes.median()])  # a short last slice is noisier than a window
    if len(slices) < 2:
        raise ValueError(
            f"monitoring.calibrate_days={cfg.calibrate_days}: the reference spans {len(sizes)} slice(s) of "
            "that length; it needs at least two to measure its own spread"
        )
    masks = [slot == s for s in slices]
    out = {}
    for col in features:
        categorical = col in data.categorical
        method = cfg.cat_method if categorical else cfg.num_method
        out[col] = cfg.drift_threshold
        if nonnull[col].empty:
            continue
        for mask in masks:
            part = _clean(frame.loc[mask, col])
            if not part.empty:
                score = _stat_test(nonnull[col], part, categorical, method, cfg.drift_threshold)[0]
                out[col] = max(out[col], score)
    return out


def _clean(values: pd.Series) -> pd.Series:
    # as Evidently does before a stat test: infinities count as missing, missing values are dropped
    if pd.api.types.is_numeric_dtype(values):
        values = values.replace([-np.inf, np.inf], np.nan)
    return values.dropna()


def _stat_test(ref: pd.Series, cur: pd.Series, categorical: bool, method: str, threshold: float):
    from evidently.legacy.calculations.stattests.registry import get_stattest
    from evidently.legacy.core import ColumnType

    kind = ColumnType.Categorical if categorical else ColumnType.Numerical
    if categorical:  # one dtype on both sides, as the categories are compared by value
        ref, cur = ref.astype(str), cur.astype(str)
    test = get_stattest(ref, cur, kind, method)
    result = test(ref, cur, kind, threshold)
    return float(result.drift_score), bool(result.drifted), test.display_name


def feature_drift(current: pd.DataFrame, reference: Reference, cfg: MonitoringCfg) -> DriftFigures:
    """Per-feature drift (Evidently stat tests) and the share of drifted features."""
    scores, methods, thresholds, drifted = {}, {}, {}, []
    for col in reference.drift_features:
        cur = _clean(current[col])
        ref = reference._nonnull[col]
        if cur.empty or ref.empty:  # nothing to compare; the quality check reports the missing values
            continue
        categorical = col in reference.categorical
        method = cfg.cat_method if categorical else cfg.num_method
        limit = reference.thresholds[col]
        score, hit, name = _stat_test(ref, cur, categorical, method, limit)
        scores[col], methods[col], thresholds[col] = score, name, limit
        if hit:
            drifted.append(col)
    checked = len(scores)
    return DriftFigures(
        share=len(drifted) / checked if checked else 0.0,
        drifted=drifted,
        scores=scores,
        methods=methods,
        threshold=cfg.drift_threshold,
        thresholds=thresholds,
        checked=checked,
    )


def score_drift(current: pd.DataFrame, reference: Reference, cfg: MonitoringCfg) -> ScoreDrift | None:
    """Drift of the model's scores against the champion's scores on its reference rows."""
    if not reference.has_scores or cfg.score_column not in current.columns:
        return None
    cur = _clean(current[cfg.score_column].astype("float64"))
    if cur.empty:
        return None
    ref = reference._nonnull[cfg.score_column]
    score, hit, name = _stat_test(ref, cur, False, cfg.score_method, cfg.score_threshold)
    return ScoreDrift(score=score, detected=hit, method=name, threshold=cfg.score_threshold)


def data_quality(current: pd.DataFrame, reference: Reference) -> QualityFigures:
    """Missing shares (and their rise over the reference), unseen categories, out-of-range values."""
    n = max(len(current), 1)
    features = [*reference.categorical, *reference.numeric]
    missing = {c: float(current[c].isna().mean()) if len(current) else 0.0 for c in features}
    increase = {c: max(0.0, missing[c] - reference.missing_share[c]) for c in features}
    unseen_share, unseen_values = {}, {}
    for col in reference.categorical:
        values = current[col].dropna().astype(str)
        new = ~values.isin(reference.categories[col])
        unseen_share[col] = float(new.sum() / n)
        unseen_values[col] = sorted(values[new].unique().tolist())[:20]
    out_of_range = {}
    for col, (lo, hi) in reference.bounds.items():
        values = pd.to_numeric(current[col], errors="coerce")
        out_of_range[col] = float(((values < lo) | (values > hi)).sum() / n)
    return QualityFigures(
        missing_share=missing,
        missing_increase=increase,
        unseen_share=unseen_share,
        unseen_values=unseen_values,
        out_of_range_share=out_of_range,
    )


def _naive_utc(values: pd.Series | pd.Timestamp | datetime) -> Any:
    """Timestamps comparable across sources: aware ones in UTC without the zone, naive ones as they are."""
    if isinstance(values, pd.Series):
        ts = pd.to_datetime(values)
        return ts.dt.tz_convert("UTC").dt.tz_localize(None) if ts.dt.tz is not None else ts
    ts = pd.Timestamp(values)
    return ts.tz_convert("UTC").tz_localize(None) if ts.tzinfo is not None else ts


def _key_form(values: pd.Series) -> pd.Series:
    # 1 and 1.0 must meet (a key logged as int, a label row holding float): numbers as floats, else text
    return values.astype("float64") if pd.api.types.is_numeric_dtype(values) else values.astype(str)


def join_labels(
    current: pd.DataFrame,
    labels: pd.DataFrame,
    data: DataCfg,
    window_end: datetime | pd.Timestamp,
    label_delay_days: float,
) -> pd.DataFrame:
    """`current` with the label column from `labels` (feature rows with labels), joined on data.key.

    A label counts only once it has arrived: its row time (data.time_column) + the label delay must be
    at or before the window end; others (and rows without a match) get a missing label."""
    if not data.key:
        raise ValueError("data.key is empty: labels cannot be joined to predictions")
    out = current.drop(columns=[data.label], errors="ignore")
    missing = [c for c in data.key if c not in out.columns]
    if missing:
        raise ValueError(f"window rows lack key columns {missing}; labels cannot be joined")
    arrived_by = _naive_utc(window_end) - timedelta(days=label_delay_days)
    times = _naive_utc(labels[data.time_column])
    ready = labels.loc[times <= arrived_by, [*data.key, data.label]].dropna(subset=[data.label])
    ready = ready.assign(**{k: _key_form(ready[k]) for k in data.key}).drop_duplicates(list(data.key), keep="last")
    left = out.assign(**{f"__k{i}": _key_form(out[k]) for i, k in enumerate(data.key)})
    right = ready.rename(columns={k: f"__k{i}" for i, k in enumerate(data.key)})
    merged = left.merge(right, on=[f"__k{i}" for i in range(len(data.key))], how="left", validate="many_to_one")
    return merged.drop(columns=[f"__k{i}" for i in range(len(data.key))])


def performance(
    current: pd.DataFrame,
    data: DataCfg,
    cfg: MonitoringCfg,
    champion: dict[str, float] | None,
) -> PerformanceFigures | None:
    """ROC-AUC, Brier and log loss on the labelled rows, against the champion's test metrics."""
    from flightloop.metrics import classification_metrics

    if data.label not in current.columns or cfg.score_column not in current.columns:
        return None
    rows = current[[data.label, cfg.score_column]].dropna()
    if len(rows) < cfg.min_labelled_rows or rows[data.label].nunique() < 2:
        return None
    y = rows[data.label].to_numpy(dtype=np.int64)
    p = rows[cfg.score_column].to_numpy(dtype=np.float64)
    m = classification_metrics(y, p, threshold=0.5)
    base = {k: float(champion[k]) for k in ("roc_auc", "brier", "log_loss") if champion and k in champion}
    return PerformanceFigures(
        rows=len(rows),
        roc_auc=m["roc_auc"],
        brier=m["brier"],
        log_loss=m["log_loss"],
        positive_rate=m["positive_rate"],
        champion=base,
        auc_drop=base["roc_auc"] - m["roc_auc"] if "roc_auc" in base else None,
        brier_rise=m["brier"] - base["brier"] if "brier" in base else None,
        log_loss_rise=m["log_loss"] - base["log_loss"] if "log_loss" in base else None,
    )


def summarize_window(
    current: pd.DataFrame,
    reference: Reference,
    data: DataCfg,
    cfg: MonitoringCfg,
    *,
    window_id: str,
    start: datetime | pd.Timestamp,
    end: datetime | pd.Timestamp,
    labels: pd.DataFrame | None = None,
    label_delay_days: float = 0.0,
    champion_metrics: dict[str, float] | None = None,
    model_name: str | None = None,
    model_version: int | None = None,
    calibrator: Calibrator | None = None,
) -> WindowSummary:
    """Drift, score drift, quality, (when labels have arrived) performance of one window, and (given the
    champion's `calibrator`) its performance estimated from the scores of all its rows.

    Labels come only from `labels`, through `join_labels` (the delay is enforced); a label column
    already in `current` is ignored."""
    missing = [c for c in data.features if c not in current.columns]
    if missing:
        raise ValueError(f"window lacks feature columns: {missing}")
    if labels is not None:
        current = join_labels(current, labels, data, end, label_delay_days)
    else:
        current = current.drop(columns=[data.label], errors="ignore")
    used = _sample(current, cfg.current_max_rows, cfg.seed)
    perf = performance(current, data, cfg, champion_metrics)
    labelled = int(current[data.label].notna().sum()) if data.label in current.columns else 0
    return WindowSummary(
        window_id=window_id,
        start=str(pd.Timestamp(start)),
        end=str(pd.Timestamp(end)),
        model_name=model_name,
        model_version=model_version,
        rows=len(current),
        rows_used=len(used),
        reference_rows=reference.rows,
        labelled_rows=labelled,
        drift=feature_drift(used, reference, cfg),
        score_drift=score_drift(used, reference, cfg),
        quality=data_quality(current, reference),
        performance=perf,
        estimated=estimated_performance(current, cfg, calibrator, champion_metrics),
    )


def estimated_performance(
    current: pd.DataFrame, cfg: MonitoringCfg, calibrator: Calibrator | None, champion: dict[str, float] | None
) -> EstimatedPerformance | None:
    """Label-free ROC-AUC and Brier of the window's scores (None without a calibrator or scores)."""
    if calibrator is None or cfg.score_column not in current.columns:
        return None
    return estimate(current[cfg.score_column].to_numpy(dtype=np.float64), calibrator, champion)


def drift_report(current: pd.DataFrame, reference: Reference, cfg: MonitoringCfg):
    """The Evidently report (drift table per feature, score drift) on seeded samples, for HTML/JSON."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import ValueDrift
    from evidently.presets import DataDriftPreset

    features = list(reference.drift_features)
    with_score = reference.has_scores and cfg.score_column in current.columns
    columns = features + ([cfg.score_column] if with_score else [])
    definition = DataDefinition(
        categorical_columns=[c for c in features if c in reference.categorical],
        numerical_columns=[c for c in features if c in reference.numeric] + ([cfg.score_column] if with_score else []),
    )

    def dataset(frame: pd.DataFrame) -> Dataset:
        part = _sample(frame[columns], cfg.report_max_rows, cfg.seed).copy()
        for col in definition.categorical_columns or []:
            part[col] = part[col].astype("string").astype(object).where(part[col].notna(), None)
        return Dataset.from_pandas(part.reset_index(drop=True), data_definition=definition)

    metrics: list[Any] = [
        DataDriftPreset(
            columns=features,
            num_method=cfg.num_method,
            cat_method=cfg.cat_method,
            threshold=cfg.drift_threshold,
            per_column_threshold=dict(reference.thresholds),  # the summary's thresholds
        )
    ]
    if with_score:
        metrics.append(ValueDrift(column=cfg.score_column, method=cfg.score_method, threshold=cfg.score_threshold))
    return Report(metrics).run(current_data=dataset(current), reference_data=dataset(reference.sample))


def report_values(snapshot) -> dict[str, float]:
    """Per-column drift scores from a Snapshot's ValueDrift metrics (to cross-check the summary)."""
    out = {}
    for item in snapshot.dict()["metrics"]:
        config = item.get("config", {})
        if config.get("type", "").endswith(":ValueDrift"):
            out[config["column"]] = float(item["value"])
    return out


# ---- reading the prediction store (contract: data/predictions/date=YYYY-MM-DD/part-*.parquet) ----


def _utc(value: datetime | pd.Timestamp) -> pd.Timestamp:
    ts = pd.Timestamp(value)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
