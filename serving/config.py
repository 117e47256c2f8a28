"""params.yaml `serving:` section, validated here (tasks/config.py passes it through in `Params.extra`)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from tasks.config import Params, parse_section


class ServingCfg(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    alias: str = "champion"
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    poll_seconds: float = Field(10.0, gt=0)
    max_batch_rows: int = Field(1000, ge=1)
    max_body_bytes: int = Field(1_048_576, ge=256)
    prediction_dir: Path = Path("data/predictions")
    flush_rows: int = Field(2000, ge=1)
    flush_seconds: float = Field(5.0, gt=0)
    torch_threads: int = Field(1, ge=1)


def serving_cfg(params: Params) -> ServingCfg:
    """Validate `params.extra['serving']`; unknown keys are refused with their name."""
    return parse_section(ServingCfg, params.extra.get("serving"), "serving")
