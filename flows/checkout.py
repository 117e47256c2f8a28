"""A worker's own checkout of the project (`make stack`): each flow run that changes the project catches
up with the shared history first and publishes what it made after, so that no two hosts share files.

The shared history is a git repository (the stack's, a bare repo any host can clone) and a DVC remote:
before the change `git pull --ff-only` + `dvc pull`, after it `dvc push` + a commit of dvc.lock +
`git push`. Runs hold the project's writer slot (flows.common.workspace_lock, kept by the Prefect
server) around all of it, so the pushes never race. A checkout without FLIGHTLOOP_DVC_REMOTE (the
project itself, `make ui`, the tests, the replay) is left alone."""

from __future__ import annotations

import contextlib
import contextvars
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import yaml

REMOTE_ENV = "FLIGHTLOOP_DVC_REMOTE"  # a DVC remote URL or path; set on the stack's deployments
BRANCH_ENV = "FLIGHTLOOP_GIT_BRANCH"  # the branch runs publish to (default: main)
_GIT = ["git", "-c", "user.name=flightloop-worker", "-c", "user.email=worker@localhost"]
_DVC = [sys.executable, "-m", "dvc"]
INBOX = "data/incoming"  # batch files the ingest stage reads: small, so git carries them between hosts
_active: contextvars.ContextVar[bool] = contextvars.ContextVar("flightloop_synced", default=False)


def _run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} failed in {cwd}:\n{proc.stdout[-1500:]}\n{proc.stderr[-1500:]}")
    return proc


def catch_up(project: Path, remote: str, branch: str) -> None:
    """The latest published commit and the data versions its dvc.lock names."""
    _run([*_GIT, "pull", "-q", "--ff-only", "origin", branch], project)
    _run([*_DVC, "remote", "add", "--local", "--force", "stack", remote], project)
    # --allow-missing: an output nobody pushed yet (a checkout's first run) is rebuilt by its stage
    _run([*_DVC, "pull", "-q", "--remote", "stack", "--allow-missing"], project)


def uncached_outputs(project: Path) -> list[str]:
    """Outputs dvc.yaml keeps out of the DVC cache (`cache: false`: metrics, plots, small records): git
    carries them, so a fresh clone + `dvc pull` has every output."""
    stages = (yaml.safe_load((project / "dvc.yaml").read_text()) or {}).get("stages", {})
    found = []
    for stage in stages.values():
        for kind in ("outs", "metrics", "plots"):
            for entry in stage.get(kind, []) or []:
                if isinstance(entry, dict):
                    for path, opts in entry.items():
                        if isinstance(opts, dict) and opts.get("cache") is False and (project / path).exists():
                            found.append(path)
    return sorted(set(found))


def publish(project: Path, message: str, branch: str) -> str | None:
    """Push the data versions dvc.lock names, commit dvc.lock (and the uncached outputs) and push it;
    the new commit, or None."""
    _run([*_DVC, "push", "-q", "--remote", "stack"], project)
    _run([*_GIT, "add", "-f", "dvc.lock", *uncached_outputs(project)], project, check=False)
    # the inbox as dvc.lock saw it: new batches added, a batch validate moved to quarantine removed
    _run([*_GIT, "add", "-A", "-f", "--", INBOX], project, check=False)
    if _run([*_GIT, "diff", "--cached", "--quiet"], project, check=False).returncode == 0:
        return None  # nothing new (every stage was skipped)
    _run([*_GIT, "commit", "-q", "-m", message], project)
    _run([*_GIT, "push", "-q", "origin", f"HEAD:{branch}"], project)
    return _run(["git", "rev-parse", "HEAD"], project).stdout.strip()


@contextlib.contextmanager
def synced(project: Path, message: str) -> Iterator[dict[str, str | None]]:
    """Around a change of a worker's checkout: catch up before, publish after (only on success); a run
    inside another (retraining's ingest and training) leaves both to the outer one. Yields a dict whose
    `commit` is set to the published commit."""
    remote = os.environ.get(REMOTE_ENV)
    out: dict[str, str | None] = {"commit": None}
    if not remote or _active.get():  # not a worker's checkout, or inside a run that syncs (retraining)
        yield out
        return
    branch = os.environ.get(BRANCH_ENV, "main")
    catch_up(project, remote, branch)
    token = _active.set(True)
    try:
        yield out
    finally:
        _active.reset(token)
    out["commit"] = publish(project, message, branch)
