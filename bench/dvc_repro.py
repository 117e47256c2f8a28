"""Wall time of `dvc repro` from scratch and of a no-op `dvc repro`, on the default config.

Run: `make bench-dvc` (or `python -m bench.dvc_repro`). Builds a throw-away copy of the project
(git + DVC) in a temp dir so your workspace is untouched; writes reports/bench_dvc.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from tests.conftest import SMALL, make_project, run


def timed(cmd: list[str], cwd: Path) -> tuple[float, str]:
    t0 = time.perf_counter()
    out = run(cmd, cwd).stdout
    return time.perf_counter() - t0, out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--small", action="store_true", help="use the tests' shrunk config instead of the default")
    ap.add_argument("--noop-repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=Path("reports/bench_dvc.json"))
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        # make_project shrinks params; undo that unless --small
        project = make_project(Path(tmp), overrides=None)
        if not args.small:
            (project / "params.yaml").write_text(Path("params.yaml").read_text())
        scratch, out = timed(["dvc", "repro"], project)
        stages = out.count("Running stage")
        noops = [timed(["dvc", "repro"], project)[0] for _ in range(args.noop_repeats)]
        status, _ = timed(["dvc", "status"], project)
    result = {
        "config": "small" if args.small else "default",
        "small_overrides": SMALL if args.small else None,
        "from_scratch_s": round(scratch, 1),
        "stages_run": stages,
        "noop_median_s": round(statistics.median(noops), 2),
        "noop_all_s": [round(x, 2) for x in noops],
        "dvc_status_s": round(status, 2),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    for k, v in result.items():
        print(f"{k:>18}: {v}")


if __name__ == "__main__":
    main()
