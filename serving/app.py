"""The online service: FastAPI app that serves `models:/<name>@champion` and follows the alias.

python -m serving [--host 127.0.0.1] [--port 8000] [--params params.yaml] [--allow-no-token]

Every request answered 200 is in the prediction log (serving/predlog.py): its rows are journaled before the
response is sent; when the journal cannot take them (disk full, store gone) /predict answers 503 and
/ready turns 503 until it can. With SERVING_TOKEN set, every path but /health and /ready needs
`Authorization: Bearer <token>`; listening beyond loopback without a token is refused.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import math
import os
import re
import secrets
import sys
import tempfile
import time
import uuid
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import BaseModel

from flightloop.config import ServingCfg
from flightloop.redact import RedactFilter, redact
from serving.model import Follower, LiveModel
from serving.predlog import LogUnavailable, PredictionLog

log = logging.getLogger(__name__)
TOKEN_ENV = "SERVING_TOKEN"
OPEN_PATHS = {"/health", "/ready"}  # probes; everything else needs the token when one is set
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
KNOWN_PATHS = {"/predict", "/health", "/ready", "/model", "/metrics", "/reload"}


class BadInput(Exception):
    def __init__(self, status: int, field: str, message: str):
        super().__init__(message)
        self.status, self.field, self.message = status, field, message


class Prediction(BaseModel):
    probability: float
    label: int


class PredictResponse(BaseModel):
    request_id: str
    model_name: str
    model_version: int
    threshold: float
    predictions: list[Prediction]


class Problem(BaseModel):
    detail: str
    field: str | None = None


ERRORS = {s: {"model": Problem} for s in (400, 401, 413, 415, 422, 503)}


def _text_ok(v: str) -> bool:
    """The string can be stored (UTF-8): JSON can carry lone surrogates such as "\\ud800", Parquet cannot."""
    try:
        v.encode()
        return True
    except UnicodeEncodeError:
        return False


def _finite(v: int | float) -> bool:
    try:
        return math.isfinite(v)
    except OverflowError:  # an int too large for a float
        return False


def parse_rows(body: bytes, model: LiveModel, max_rows: int) -> list[dict[str, Any]]:
    """JSON body -> validated rows; every problem is a BadInput naming the field."""
    try:
        data = json.loads(body)  # NaN/Infinity parse to floats and are refused below, by field
    except RecursionError:
        raise BadInput(400, "body", "JSON nested too deeply") from None
    except ValueError as exc:  # includes JSONDecodeError and bad UTF-8
        raise BadInput(400, "body", f"body: not valid JSON: {exc}") from None
    if isinstance(data, dict) and "rows" in data:
        if set(data) != {"rows"}:
            raise BadInput(
                422,
                ",".join(sorted(set(data) - {"rows"})),
                f"unknown top-level field(s) next to 'rows': {sorted(set(data) - {'rows'})}",
            )
        rows, where = data["rows"], "rows"
        if not isinstance(rows, list):
            raise BadInput(422, "rows", "'rows' must be a list of row objects")
    elif isinstance(data, dict):
        rows, where = [data], "row"
    elif isinstance(data, list):
        rows, where = data, "rows"
    else:
        raise BadInput(422, "body", 'body: send one row object, a list of rows, or {"rows": [...]}')
    if not rows:
        raise BadInput(422, "rows", "rows: empty batch, send at least one row")
    if len(rows) > max_rows:
        raise BadInput(413, "rows", f"rows: batch of {len(rows)} rows is over the limit of {max_rows}")
    allowed = set(model.features) | set(model.key)
    extra_keys = [k for k in model.key if k not in model.features]
    # only an escape or a raw surrogate encoding (0xED...) can make one; skip the per-string check otherwise
    check_text = b"\\u" in body or b"\xed" in body
    for i, row in enumerate(rows):
        at = f"{where}[{i}]" if where == "rows" else "row"
        if not isinstance(row, dict):
            raise BadInput(422, at, f"{at} must be an object of feature fields")
        unknown = [k for k in row if k not in allowed]
        if unknown:
            raise BadInput(422, unknown[0], f"{at}: unknown field(s) {sorted(unknown)}")
        missing = [c for c in model.features if c not in row]
        if missing:
            raise BadInput(422, missing[0], f"{at}: missing field(s) {missing} (send null for a missing value)")
        for c in model.categorical:
            v = row[c]
            if v is not None and not isinstance(v, str):
                raise BadInput(422, c, f"{at}.{c}: expected a string or null, got {type(v).__name__}")
            if check_text and v is not None and not _text_ok(v):
                raise BadInput(422, c, f"{at}.{c}: not valid Unicode text (it holds a lone surrogate)")
        for c in model.numeric:
            v = row[c]
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise BadInput(422, c, f"{at}.{c}: expected a number or null, got {type(v).__name__}")
            if not _finite(v):
                raise BadInput(422, c, f"{at}.{c}: {v} is not allowed; send null for a missing value")
        for c in extra_keys:
            v = row.get(c)
            if v is None:
                continue
            if isinstance(v, str):
                if check_text and not _text_ok(v):
                    raise BadInput(422, c, f"{at}.{c}: not valid Unicode text (it holds a lone surrogate)")
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not _finite(v):
                raise BadInput(422, c, f"{at}.{c}: key column must be a string or a finite number")
            if isinstance(v, int) and not -(2**63) <= v < 2**63:  # a key must stay exact to join labels
                raise BadInput(422, c, f"{at}.{c}: key column integer {v} is outside the 64-bit range")
    return rows


def row_schema(model: LiveModel | None) -> dict[str, Any]:
    if model is None:
        return {"type": "object", "description": "feature fields of the loaded model (none loaded yet)"}
    props: dict[str, Any] = {c: {"type": ["string", "null"]} for c in model.categorical}
    props.update({c: {"type": ["number", "null"]} for c in model.numeric})
    props.update({c: {"type": ["string", "integer", "null"]} for c in model.key if c not in props})
    return {"type": "object", "properties": props, "required": list(model.features), "additionalProperties": False}


def body_schema(model: LiveModel | None, max_rows: int) -> dict[str, Any]:
    row = row_schema(model)
    batch = {
        "type": "object",
        "properties": {"rows": {"type": "array", "items": row, "minItems": 1, "maxItems": max_rows}},
        "required": ["rows"],
        "additionalProperties": False,
    }
    return {"anyOf": [batch, row] if model is not None else [batch]}


class Metrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter("serving_requests", "HTTP requests", ["path", "status"], registry=r)
        self.latency = Histogram(
            "serving_request_latency_seconds",
            "request latency",
            ["path"],
            registry=r,
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
        self.scores = Histogram(
            "serving_prediction_score",
            "predicted delay probability",
            registry=r,
            buckets=tuple(i / 10 for i in range(1, 11)),
        )
        self.rows = Counter("serving_predicted_rows", "rows scored by predicted label", ["label"], registry=r)
        self.batch = Histogram(
            "serving_batch_rows",
            "rows per predict request",
            registry=r,
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
        )
        self.version = Gauge("serving_model_version", "registry version being served", registry=r)
        self.swaps = Counter("serving_model_swaps", "model swaps (alias moves followed)", registry=r)
        self.logged = Gauge("serving_prediction_log_rows", "rows written to the prediction store", registry=r)
        self.log_errors = Gauge("serving_prediction_log_errors", "prediction store write errors", registry=r)
        self.journaled = Gauge("serving_prediction_log_journaled_rows", "rows journaled (answered)", registry=r)
        self.pending = Gauge("serving_prediction_log_pending_rows", "journaled rows not in Parquet yet", registry=r)
        self.degraded = Gauge(
            "serving_prediction_log_degraded", "1 while the log cannot write or holds dead letters", registry=r
        )
        self.dead = Gauge("serving_prediction_log_dead_letter_rows", "rows kept out of Parquet (repair)", registry=r)
        self.refused = Counter(
            "serving_prediction_log_refused", "requests answered 503 because the log was unavailable", registry=r
        )
        self.registry_ok = Gauge("serving_registry_ok", "1 when the last alias check succeeded", registry=r)


class MetricsMiddleware:
    """Counts and times every request (pure ASGI, so it adds microseconds, not a task per request)."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"] if scope["path"] in KNOWN_PATHS else "other"
        status = {"code": 500}
        t0 = time.perf_counter()

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.latency.labels(path).observe(time.perf_counter() - t0)
            self.metrics.requests.labels(path, str(status["code"])).inc()


class AuthMiddleware:
    """With a token set, every path but the probes needs `Authorization: Bearer <token>`: the API, /docs and
    /openapi.json alike (default deny, so a route added later is covered too)."""

    def __init__(self, app, token: str):
        self.app, self.expected = app, b"Bearer " + token.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        got = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
        if secrets.compare_digest(got, self.expected):
            return await self.app(scope, receive, send)
        denied = problem(401, "missing or wrong bearer token", "authorization", {"WWW-Authenticate": "Bearer"})
        await denied(scope, receive, send)


def problem(status: int, detail: str, field: str | None = None, headers: dict | None = None) -> Response:
    # ensure_ascii: a field name may be any string a client sent, lone surrogates included
    body = json.dumps({"detail": detail, "field": field})
    return Response(body, status_code=status, headers=headers, media_type="application/json")


def create_app(
    cfg: ServingCfg, model_name: str, token: str | None = None, cache: Path | None = None, start_follower: bool = True
) -> FastAPI:
    """The app; the model loads in the background at startup, so /health answers at once."""
    import torch

    torch.set_num_threads(cfg.torch_threads)
    token = token if token is not None else os.environ.get(TOKEN_ENV) or None
    metrics = Metrics()
    cache = cache or Path(tempfile.mkdtemp(prefix="serving-models-"))

    def on_swap(model: LiveModel) -> None:
        predlog.describe(model.version, model.categorical, model.numeric)
        metrics.version.set(model.version)
        metrics.swaps.inc()

    follower = Follower(model_name, cfg.alias, cfg.poll_seconds, cache, on_swap=on_swap)
    predlog = PredictionLog(
        cfg.prediction_dir,
        flush_rows=cfg.flush_rows,
        flush_seconds=cfg.flush_seconds,
        fsync_seconds=cfg.journal_fsync_seconds,
    )
    sync_each = cfg.journal_fsync_seconds == 0

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        predlog.start()
        if start_follower:
            follower.start()
        try:
            yield
        finally:
            follower.stop()
            predlog.close()

    app = FastAPI(title="flight-delay serving", version="1", lifespan=lifespan)
    app.state.follower, app.state.predlog, app.state.metrics, app.state.cfg = follower, predlog, metrics, cfg
    if token is not None:
        app.add_middleware(AuthMiddleware, token=token)
    app.add_middleware(MetricsMiddleware, metrics=metrics)  # outermost: refused requests are counted too

    def log_unavailable(exc: LogUnavailable) -> Response:
        metrics.refused.inc()
        detail = f"prediction log unavailable, request not scored: {redact(str(exc))}; retry later"
        return problem(503, detail, "prediction_log", {"Retry-After": "1"})

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > cfg.max_body_bytes):
            raise BadInput(413, "body", f"body: over the limit of {cfg.max_body_bytes} bytes")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > cfg.max_body_bytes:
                raise BadInput(413, "body", f"body: over the limit of {cfg.max_body_bytes} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    @app.post(
        "/predict",
        responses={200: {"model": PredictResponse}, **ERRORS},
        openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": {}}}}},
    )
    async def predict(request: Request) -> Response:
        """Score one row object, a list of rows, or {"rows": [...]}: probability and label per row."""
        model = follower.current  # read once: this request finishes on this version even if a swap happens
        if model is None:
            return problem(503, f"no model loaded yet ({follower.last_error})")
        try:
            body = await read_body(request)
            rows = parse_rows(body, model, cfg.max_batch_rows)
        except BadInput as exc:
            return problem(exc.status, exc.message, exc.field)
        rid = request.headers.get("x-request-id", "")
        rid = rid if _REQUEST_ID.match(rid) else uuid.uuid4().hex
        ts_us = time.time_ns() // 1000
        scores = model.predict_rows(rows)
        labels = scores >= model.threshold
        try:  # logged before answered: a 200 is never missing from the log, even after kill -9
            predlog.append(rid, ts_us, model.version, body, rows, scores, labels)
            if sync_each:
                await run_in_threadpool(predlog.sync)
        except (LogUnavailable, OSError) as exc:
            return log_unavailable(exc if isinstance(exc, LogUnavailable) else LogUnavailable(str(exc)))
        score_list, label_list = scores.tolist(), labels.astype(int).tolist()
        metrics.batch.observe(len(rows))
        for s in score_list:
            metrics.scores.observe(s)
        positives = sum(label_list)
        metrics.rows.labels("1").inc(positives)
        metrics.rows.labels("0").inc(len(label_list) - positives)
        body = {
            "request_id": rid,
            "model_name": model.name,
            "model_version": model.version,
            "threshold": model.threshold,
            "predictions": [{"probability": s, "label": v} for s, v in zip(score_list, label_list, strict=True)],
        }
        return Response(json.dumps(body), media_type="application/json", headers={"x-request-id": rid})

    def log_state() -> dict[str, Any]:
        state = predlog.status()
        for k in ("journal_error", "compaction_error"):
            state[k] = redact(state[k]) if state[k] else None
        return state

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """The process is up (200 always); `status` is `degraded` while the prediction log needs attention."""
        state = log_state()
        return {"status": "degraded" if state["degraded"] else "ok", "prediction_log": state}

    @app.get("/ready", responses={503: {"model": Problem}})
    async def ready() -> Response:
        """200 while a model is loaded and the prediction log takes writes; 503 (with the cause) otherwise."""
        model, state = follower.current, log_state()
        body = {"model_version": model.version if model else None, "registry_error": follower.last_error}
        if model is None:
            detail = f"no model loaded: {follower.last_error}"
        elif state["journal_error"]:
            detail = f"prediction log unavailable: {state['journal_error']}"
        else:
            return JSONResponse({"ready": True, **body, "prediction_log": state})
        return Response(
            json.dumps({"ready": False, "detail": detail, **body, "prediction_log": state}),
            status_code=503,
            media_type="application/json",
        )

    @app.get("/model", responses={401: {"model": Problem}, 503: {"model": Problem}})
    async def model_info() -> Response:
        """Name, version, alias and lineage (data hash, commit) of the model being served."""
        model = follower.current
        if model is None:
            return problem(503, f"no model loaded yet ({follower.last_error})")
        return JSONResponse({**model.describe(cfg.alias), "swaps": follower.swaps})

    @app.post("/reload", responses={401: {"model": Problem}, 503: {"model": Problem}})
    async def reload() -> Response:
        """Check the alias now and swap in the version it names (requests keep being served meanwhile; on
        failure the live model keeps serving)."""
        try:
            result = await run_in_threadpool(follower.check)
        except Exception as exc:
            live = follower.current.version if follower.current else None
            return problem(503, f"reload failed, still serving v{live}: {redact(f'{exc.__class__.__name__}: {exc}')}")
        return JSONResponse(result)

    @app.get("/metrics", responses={401: {"model": Problem}})
    async def prometheus() -> Response:
        """Prometheus metrics: requests, latency, prediction distribution, model version, log health."""
        state = predlog.status()
        metrics.logged.set(state["rows_written"])
        metrics.log_errors.set(state["errors"])
        metrics.journaled.set(state["rows_journaled"])
        metrics.pending.set(state["rows_pending"])
        metrics.degraded.set(int(state["degraded"]))
        metrics.dead.set(state["dead_letter_rows"])
        metrics.registry_ok.set(int(follower.last_error is None))
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    openapi_cache: dict[str, Any] = {}

    def openapi() -> dict[str, Any]:
        """The schema names the live model's feature fields (it is rebuilt when the version changes)."""
        model = follower.current
        version = model.version if model else None
        if openapi_cache.get("version", -1) != version:
            schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
            body = schema["paths"]["/predict"]["post"]["requestBody"]
            body["content"]["application/json"]["schema"] = body_schema(model, cfg.max_batch_rows)
            openapi_cache.update(version=version, schema=schema)
        return openapi_cache["schema"]

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name other than localhost may resolve anywhere
        return False


def main(argv: list[str] | None = None) -> None:
    from flightloop import paths
    from flightloop.config import load_params

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default=paths.PARAMS, type=Path)
    ap.add_argument("--host")
    ap.add_argument("--port", type=int)
    ap.add_argument(
        "--prediction-dir", type=Path, help="log predictions here (a replica's own folder of a shared store)"
    )
    ap.add_argument(
        "--allow-no-token", action="store_true", help=f"listen beyond loopback without {TOKEN_ENV} (warns loudly)"
    )
    args = ap.parse_args(argv)
    params = load_params(args.params)
    cfg = params.serving
    if args.prediction_dir is not None:
        cfg = cfg.model_copy(update={"prediction_dir": args.prediction_dir})
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactFilter())
    host, port = args.host or cfg.host, args.port if args.port is not None else cfg.port
    token = os.environ.get(TOKEN_ENV) or None
    if token is None and not is_loopback(host):
        if not args.allow_no_token:
            sys.exit(
                f"refusing to serve on {host}, beyond loopback, without a token: set {TOKEN_ENV} "
                "(or pass --allow-no-token to expose /predict, /reload and /model to anyone who can reach it)"
            )
        log.critical("serving on %s WITHOUT a token (%s unset): anyone who reaches it can /reload", host, TOKEN_ENV)
    # the follower retries every poll: MLflow's own retries (minutes by default) would only hide the cause
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(cfg.registry_retries))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(int(cfg.registry_timeout_seconds)))
    import uvicorn

    app = create_app(cfg, params.register_.model_name, token=token)
    print(f"serving models:/{params.register_.model_name}@{cfg.alias} on http://{host}:{port}", flush=True)
    # log_config=None: uvicorn's records go through the root handler and its redaction
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False, log_config=None)


if __name__ == "__main__":
    main()
