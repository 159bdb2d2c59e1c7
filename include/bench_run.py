"""`make bench-run`: how long the whole fraud_detection run takes on the local cloud.

Runs the DAG as `make run` does, BENCH_RUNS times (default 3) with the default params (tuning on,
8 trials, 2 in parallel) and as many times with tuning off as the baseline, all from this one
process against the same local cloud, and prints a table of medians: wall time of the run and
task time per stage (task group), with the ratio of each against the baseline. Each run's line
also gives what it produced: the chosen model's test AUC, its DPPL and the package's status.
Then the default run with FRAUD_DEFERRABLE on beside off (waits run as triggers, inline under
`airflow dags test`), run alternately, with its ratio."""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections import defaultdict
from typing import Any

from include.local_run import DEFAULT_CONF, RunError, collect_results, ensure_local_cloud, run_dag
from include.stack.config import load_config

TARGET_SECONDS = 60  # issue 9: the default run's median wall time, at most
DEFAULT = "default: tuning, 8 trials, 2 parallel"
VARIANTS = {
    "baseline: tuning off": {**DEFAULT_CONF, "tuning": False},
    DEFAULT: dict(DEFAULT_CONF),
}


def stage_of(task_id: str) -> str:
    """A task's stage: its task group (the task itself when in none)."""
    return task_id.split(".")[0]


def stage_seconds(task_seconds: dict[str, float]) -> dict[str, float]:
    stages: dict[str, float] = defaultdict(float)
    for task_id, seconds in task_seconds.items():
        stages[stage_of(task_id)] += seconds
    return stages


def main() -> int:
    runs = int(os.environ.get("BENCH_RUNS", "3"))
    config = load_config()
    try:
        ensure_local_cloud(config)
        walls: dict[str, list[float]] = defaultdict(list)
        aucs: dict[str, list[float]] = defaultdict(list)
        stages: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        for attempt in range(runs):
            for variant, conf in VARIANTS.items():
                started = time.monotonic()
                run_id, state, seconds = run_dag(config, conf, show_tasks=False)
                wall = time.monotonic() - started
                if state != "success":
                    raise RunError(f"{variant}: run {run_id} ended {state}")
                summary, _ = collect_results(config, run_id, state, seconds)
                print(f"  run {attempt + 1}/{runs} {variant}: {wall:.1f} s; test AUC {summary['test_auc']:.3f}, "
                      f"DPPL {summary['post_training_bias']['DPPL']:+.3f}, {summary['model_approval_status']}",
                      flush=True)
                walls[variant].append(wall)
                aucs[variant].append(summary["test_auc"])
                for stage, value in stage_seconds(seconds).items():
                    stages[variant][stage].append(value)
    except RunError as error:
        print(error, file=sys.stderr)
        return 1
    baseline, default = VARIANTS
    print(f"\nfraud_detection on the local cloud, median of {runs} runs each ({os.cpu_count()} cores)\n")
    rows = [("whole run, wall time", walls[baseline], walls[default])]
    rows += [(f"stage {stage}, task time", stages[baseline].get(stage, [0.0]), values)
             for stage, values in sorted(stages[default].items(), key=lambda item: -statistics.median(item[1]))]
    width = max(len(name) for name, _, _ in rows)
    print(f"| {'measure':<{width}} | {'baseline (s)':>12} | {'default (s)':>11} | {'ratio':>5} |")
    print(f"|{'-' * (width + 2)}|{'-' * 14}|{'-' * 13}|{'-' * 7}|")
    for name, base, measured in rows:
        base_median, median = statistics.median(base), statistics.median(measured)
        ratio = f"{median / base_median:.2f}" if base_median else "-"
        print(f"| {name:<{width}} | {base_median:>12.1f} | {median:>11.1f} | {ratio:>5} |")
    print(f"\nTest AUC of the chosen model, median: {statistics.median(aucs[baseline]):.3f} (baseline), "
          f"{statistics.median(aucs[default]):.3f} (default)")
    median = statistics.median(walls[default])
    verdict = "met" if median <= TARGET_SECONDS else "NOT met"
    print(f"\nTarget: the default run in {TARGET_SECONDS} s or less: {verdict} ({median:.1f} s).")
    return deferrable_beside_waiting(config, runs)


def deferrable_beside_waiting(config: Any, runs: int) -> int:
    """The default run with FRAUD_DEFERRABLE off and on, alternately: medians and their ratio."""
    walls: dict[str, list[float]] = defaultdict(list)
    deferred_counts: list[int] = []
    modes = {"off": "false", "on": "true"}
    try:
        for attempt in range(runs):
            for mode, value in modes.items():
                os.environ["FRAUD_DEFERRABLE"] = value
                deferred: set[str] = set()
                started = time.monotonic()
                run_id, state, _ = run_dag(config, VARIANTS[DEFAULT], show_tasks=False, deferred=deferred)
                wall = time.monotonic() - started
                if state != "success":
                    raise RunError(f"FRAUD_DEFERRABLE={value}: run {run_id} ended {state}")
                print(f"  run {attempt + 1}/{runs} default, FRAUD_DEFERRABLE {mode}: {wall:.1f} s, "
                      f"{len(deferred)} tasks deferred", flush=True)
                walls[mode].append(wall)
                if mode == "on":
                    deferred_counts.append(len(deferred))
    except RunError as error:
        print(error, file=sys.stderr)
        return 1
    finally:
        os.environ.pop("FRAUD_DEFERRABLE", None)
    off, on = statistics.median(walls["off"]), statistics.median(walls["on"])
    print(f"\nDefault run, median of {runs} each: FRAUD_DEFERRABLE off {off:.1f} s, on {on:.1f} s "
          f"(ratio {on / off:.2f}; {statistics.median(deferred_counts):.0f} tasks deferred)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
