"""`make stack`: the project on servers, as on separate hosts, all on 127.0.0.1.

- an MLflow tracking server on PostgreSQL, proxying artifacts (`mlflow server --backend-store-uri
  postgresql+psycopg://... --artifacts-destination ...`);
- a Prefect server on PostgreSQL (`PREFECT_API_DATABASE_CONNECTION_URL=postgresql+asyncpg://...`);
- a process work pool and workers, each running flows in its own git clone of the stack's repository
  (the deployments' pull step), data through the stack's DVC remote (flows/checkout.py);
- every deployment of flows/deploy.py on that pool, the retrain automation, the writer slot;
- service replicas on their own ports, each following models:/<model>@champion on the MLflow server.

It keeps its files in `.stack/` (git repo, DVC remote, MLflow artifacts, logs) and its data in its own
databases (`<db-prefix>_mlflow`, `<db-prefix>_prefect`, and `<db-prefix>_loop` for the retraining policy's
state), created when missing and never dropped: a second `make stack` reuses all of it. Ctrl-C stops every
process."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flows.checkout import BRANCH_ENV, REMOTE_ENV
from flows.ui import HOST, stop, supervise, wait_healthy
from monitoring.report import STATE_DB_ENV
from serving.predlog import STORE_ENV

STACK_DIR = Path(".stack")
PG_ENV = "STACK_PG_URL"
DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432"


class StackError(RuntimeError):
    """What the stack needs and does not have, in words a user can act on."""


@dataclass(frozen=True)
class Layout:
    """Where a stack keeps its files, and the names of its databases."""

    project: Path
    db_prefix: str

    @property
    def root(self) -> Path:
        return self.project / STACK_DIR

    @property
    def git(self) -> Path:  # the bare repository workers clone and push to (a git server's stand-in)
        return self.root / "git"

    @property
    def dvc_remote(self) -> Path:
        return self.root / "dvc-remote"

    @property
    def artifacts(self) -> Path:
        return self.root / "mlartifacts"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def database(self, part: str) -> str:
        return f"{self.db_prefix}_{part}"


def pg_url(base: str, database: str, driver: str = "psycopg") -> str:
    """`base` (postgresql://user@host:port) with a SQLAlchemy driver and a database name."""
    rest = base.split("://", 1)[1].rstrip("/")
    return f"postgresql+{driver}://{rest}/{database}"


def ensure_databases(base: str, names: list[str]) -> list[str]:
    """Create the databases that do not exist yet; the ones created. A clear StackError when PostgreSQL
    cannot be reached."""
    import psycopg

    try:
        conn = psycopg.connect(f"{base.rstrip('/')}/postgres", connect_timeout=5, autocommit=True)
    except psycopg.Error as exc:
        raise StackError(
            f"make stack needs PostgreSQL at {base} (set {PG_ENV} to another server); it is not reachable: "
            f"{str(exc).strip().splitlines()[0]}. `make ui` runs the same flows without it."
        ) from None
    created = []
    with conn:
        for name in names:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None:
                conn.execute(f'CREATE DATABASE "{name}"')
                created.append(name)
    return created


def _git(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)


def ensure_repository(layout: Layout) -> str:
    """The stack's bare repository, seeded from the project's HEAD; later runs bring it up to the
    project's HEAD when that only adds commits. What the workers will run, in words."""
    project = layout.project
    if _git(["rev-parse", "HEAD"], project).returncode != 0:
        raise StackError(f"{project} is not a git repository with a commit: workers clone the project from git")
    if _git(["ls-files", "--error-unmatch", ".dvc/config"], project).returncode != 0:
        raise StackError("commit .dvc/config first: workers' clones must be DVC repositories (git add .dvc)")
    if not layout.git.exists():
        proc = _git(["clone", "-q", "--bare", str(project), str(layout.git)], project.parent)
        if proc.returncode != 0:
            raise StackError(f"could not create the stack's repository: {proc.stderr.strip()}")
        _git(["symbolic-ref", "HEAD", "refs/heads/main"], layout.git)
    head = _git(["rev-parse", "HEAD"], project).stdout.strip()
    pushed = _git(["push", "-q", str(layout.git), "HEAD:refs/heads/main"], project)
    note = "" if pushed.returncode == 0 else " (the workers have published commits since: git pull stack main)"
    if _git(["remote", "get-url", "stack"], project).returncode != 0:
        _git(["remote", "add", "stack", str(layout.git)], project)
    dirty = _git(["status", "--porcelain", "--untracked-files=no"], project).stdout.strip()
    if dirty:
        note += "; uncommitted changes in the project are NOT seen by the workers"
    return f"workers run commit {head[:10]} of {layout.git}{note}"


def ensure_dvc_remote(layout: Layout, env: dict[str, str]) -> None:
    """The stack's DVC remote, holding every data version the project's cache has."""
    layout.dvc_remote.mkdir(parents=True, exist_ok=True)
    dvc = [sys.executable, "-m", "dvc"]
    subprocess.run(
        [*dvc, "remote", "add", "--local", "--force", "stack", str(layout.dvc_remote)],
        cwd=layout.project,
        env=env,
        check=True,
    )
    # outputs the cache lacks (never built here) are built by the first worker that needs them
    subprocess.run([*dvc, "push", "-q", "--remote", "stack"], cwd=layout.project, env=env, check=False)


def ensure_pool(pool: str) -> None:
    """A process work pool (created, or left as it is), on the server PREFECT_API_URL names."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
    from prefect.workers.process import ProcessWorker

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(pool)
        except ObjectNotFound:
            template = ProcessWorker.get_default_base_job_template()
            try:
                client.create_work_pool(WorkPoolCreate(name=pool, type="process", base_job_template=template))
            except ObjectAlreadyExists:
                pass
        client.read_work_pool(pool)  # there now, or this says why not


def register_deployments(repository: str, project: Path, pool: str, job_env: dict[str, str]) -> dict[str, Any]:
    """Every deployment of flows/deploy.py on `pool`, its code pulled from `repository`, plus the retrain
    automation and the project's writer slot. Returns {deployment name: id}."""
    from flightloop import paths
    from flightloop.config import load_params
    from flows.common import ensure_limit, workspace_limit
    from flows.deploy import pool_deployments
    from monitoring.alerts import ensure_retrain_automation

    ids = {}
    for deployment in pool_deployments(repository, job_env):
        ids[deployment.name] = deployment.apply(work_pool_name=pool)
    name = load_params(project / paths.PARAMS).register_.model_name
    ensure_limit(workspace_limit(name))
    ensure_retrain_automation(ids["retraining"], model_name=name)
    return ids


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--project-dir", default=".", type=Path)
    ap.add_argument("--pg", default=os.environ.get(PG_ENV, DEFAULT_PG), help=f"PostgreSQL server (or {PG_ENV})")
    ap.add_argument("--db-prefix", default="flightloop", help="the stack's databases: <prefix>_mlflow, _prefect, _loop")
    ap.add_argument("--prefect-port", type=int, default=4200)
    ap.add_argument("--mlflow-port", type=int, default=5000)
    ap.add_argument("--service-ports", default="8000,8001", help="one replica per port, comma-separated")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--pool", default="flightloop")
    ap.add_argument(
        "--register-only",
        metavar="REPOSITORY",
        help="only create the pool and register the deployments (pulling code from REPOSITORY) and the "
        "automation on the server PREFECT_API_URL names; workers take servers and secrets from their own "
        "environment (docker-compose.yml)",
    )
    args = ap.parse_args(argv)
    if args.register_only:
        ensure_pool(args.pool)
        ids = register_deployments(args.register_only, args.project_dir.resolve(), args.pool, {})
        print(f"stack: {len(ids)} deployments on work pool {args.pool!r}, code from {args.register_only}")
        return 0
    layout = Layout(args.project_dir.resolve(), args.db_prefix)
    bin_dir = Path(sys.executable).parent
    api = f"http://{HOST}:{args.prefect_port}/api"
    mlflow_url = f"http://{HOST}:{args.mlflow_port}"
    ports = [int(p) for p in args.service_ports.split(",") if p.strip()]
    replicas = [f"http://{HOST}:{p}" for p in ports]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PREFECT_API"))}
    env |= {
        "PATH": f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
        "PREFECT_HOME": str(layout.root / "prefect-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "GIT_PYTHON_REFRESH": "quiet",
    }
    # what every flow run on the pool gets, whichever worker runs it
    job_env = {"MLFLOW_TRACKING_URI": mlflow_url, REMOTE_ENV: str(layout.dvc_remote), BRANCH_ENV: "main"}
    job_env |= {"SERVING_URL": ",".join(replicas), "MLFLOW_UI_URL": mlflow_url}
    job_env[STATE_DB_ENV] = f"{args.pg.rstrip('/')}/{layout.database('loop')}"  # the retraining policy's state
    job_env[STORE_ENV] = str(layout.root / "predictions")  # every replica logs to its own folder in it
    procs: list[subprocess.Popen] = []

    def on_signal(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        dbs = [layout.database(part) for part in ("mlflow", "prefect", "loop")]
        created = ensure_databases(args.pg, dbs)
        print(f"stack: databases {', '.join(created) or 'reused'} on {args.pg}", flush=True)
        layout.logs.mkdir(parents=True, exist_ok=True)
        print(f"stack: {ensure_repository(layout)}", flush=True)
        ensure_dvc_remote(layout, env)

        def start(name: str, cmd: list[str], extra: dict[str, str] | None = None, cwd: Path | None = None):
            log = (layout.logs / f"{name}.log").open("a")
            proc = subprocess.Popen(
                cmd,
                cwd=cwd or layout.project,
                env={**env, **(extra or {})},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            procs.append(proc)
            return proc

        mlflow = start(
            "mlflow",
            [
                str(bin_dir / "mlflow"),
                "server",
                "--backend-store-uri",
                pg_url(args.pg, layout.database("mlflow")),
                "--artifacts-destination",
                str(layout.artifacts),
                "--host",
                HOST,
                "--port",
                str(args.mlflow_port),
                "--workers",
                "1",
            ],
        )
        server = start(
            "prefect-server",
            [str(bin_dir / "prefect"), "server", "start", "--host", HOST, "--port", str(args.prefect_port)],
            {
                "PREFECT_API_DATABASE_CONNECTION_URL": pg_url(args.pg, layout.database("prefect"), "asyncpg"),
                "PREFECT_SERVER_API_HOST": HOST,
                "PREFECT_SERVER_API_PORT": str(args.prefect_port),
            },
        )
        wait_healthy(f"{api}/health", server, timeout=180)
        wait_healthy(f"{mlflow_url}/health", mlflow, timeout=180)
        from prefect.settings import PREFECT_API_URL, temporary_settings

        os.environ.update({"MLFLOW_TRACKING_URI": mlflow_url, "DO_NOT_TRACK": "1"})
        with temporary_settings(updates={PREFECT_API_URL: api}):  # never an ephemeral API of our own
            ensure_pool(args.pool)
            ids = register_deployments(str(layout.git), layout.project, args.pool, job_env)
        print(f"stack: {len(ids)} deployments on work pool {args.pool!r}", flush=True)
        for i in range(1, args.workers + 1):
            home = layout.root / "workers" / f"worker-{i}"  # a host of its own: flows run in clones under it
            home.mkdir(parents=True, exist_ok=True)
            start(
                f"worker-{i}",
                [str(bin_dir / "prefect"), "worker", "start", "--pool", args.pool, "--name", f"worker-{i}"],
                {"PREFECT_API_URL": api, "TMPDIR": str(home)},
                cwd=home,
            )
        for i, port in enumerate(ports, 1):
            own = layout.root / "predictions" / f"replica-{i}"  # its folder of the store monitoring reads
            start(
                f"replica-{i}",
                [sys.executable, "-m", "serving", "--port", str(port), "--prediction-dir", str(own)],
                {"MLFLOW_TRACKING_URI": mlflow_url, "PYTHONPATH": str(layout.project)},
            )
        print(
            f"\nPrefect UI  http://{HOST}:{args.prefect_port}  (work pool {args.pool}: {args.workers} workers)\n"
            f"MLflow UI   {mlflow_url}  (PostgreSQL {layout.database('mlflow')})\n"
            f"replicas    {', '.join(replicas)}\nlogs        {layout.logs}\nCtrl-C stops all\n",
            flush=True,
        )
        return supervise(procs, "stack", f" (logs in {layout.logs})")
    except StackError as exc:
        print(f"stack: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nstack: stopping ...", file=sys.stderr)
        return 0
    finally:
        stop(procs)


if __name__ == "__main__":
    sys.exit(main())
