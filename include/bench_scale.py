"""`make bench-scale [SIZES="5000 50000"]`: the fraud_detection DAG on generated data of growing size.

For each size (policies; default 5,000, 50,000, 200,000 and 1,000,000) it makes the raw files when
they are missing (`make data`, seed 0) and runs the DAG as `make run` does, from this one process
against one local cloud: ingest_mode online_and_offline up to 50,000 policies, offline_only above,
each run under a prefix of its own (feature groups of its own, so sizes never mix). The local cloud
it starts does not enforce IAM: the template's policies grant the stack's one prefix, not these
(enforcement's own cost is measured by `make bench-cloud`); stop a `make run` cloud first (`make
down`), or its enforcement refuses the runs' prefixes. Meanwhile a
thread samples the resident memory of every process of the run: the local cloud server, its job
and model-server processes, and `airflow dags test` with whatever it starts (the Airflow task
processes), and the load average. Then it prints per stage (task group) its task seconds at each
size with the growth exponent between consecutive sizes, log(t2/t1) / log(n2/n1) (1 is linear),
and the peak RSS of the largest process while the stage ran, and checks the targets."""

from __future__ import annotations

import math
import os
import secrets
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

import psutil

from include import datagen
from include.bench_run import stage_of, stage_seconds
from include.local_run import (
    DEFAULT_CONF,
    RunError,
    airflow_home,
    collect_results,
    ensure_local_cloud,
    run_dag,
    task_intervals,
)
from include.pipeline.configs import INGEST_MODES
from include.stack.config import PROJECT_DIR, StackConfig, load_config
from include.stack.supervisor import service_process

SIZES = (5_000, 50_000, 200_000, 1_000_000)
ONLINE_UP_TO = 50_000  # policies; larger runs ingest offline_only (a backfill)
SEED = 0
SAMPLE_SECONDS = 0.25
MIB = 2**20
TARGET_WALL_SECONDS = 15 * 60  # at 1,000,000 policies
TARGET_POLICIES = 1_000_000
TARGET_LARGEST_BYTES = 2 * 2**30  # any process, at 1,000,000 policies
TARGET_AIRFLOW_BYTES = 500 * 10**6  # Airflow task processes, at every size
AIRFLOW, SERVER, JOB = "Airflow task", "local cloud server", "job"
KIND_MARKS = {AIRFLOW: "a", SERVER: "s", JOB: "j"}


def ingest_mode(policies: int) -> str:
    online_and_offline, offline_only = INGEST_MODES
    return online_and_offline if policies <= ONLINE_UP_TO else offline_only


def raw_files(policies: int) -> dict[str, Path]:
    """The generated raw files of `policies` policies, made first when missing."""
    files = datagen.raw_files(datagen.output_dir_of(policies, SEED))
    if not all(path.is_file() for path in files.values()):
        subprocess.run([sys.executable, "-m", "include.datagen", "--policies", str(policies), "--seed", str(SEED)],
                       cwd=PROJECT_DIR, check=True)
    return files


def resident_bytes(pid: int) -> int:
    """VmRSS of a process, from /proc; 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def process_tree() -> dict[int, tuple[int, list[str]]]:
    """pid -> (parent pid, command line) of every process, in one pass."""
    return {process.pid: (process.info["ppid"], process.info["cmdline"] or [])
            for process in psutil.process_iter(["ppid", "cmdline"])}


def subtree(tree: dict[int, tuple[int, list[str]]], root: int) -> set[int]:
    """The descendants of `root` in `tree`, leaving out forks that have not run their command yet:
    such a child has its parent's command line, and shares (vfork) or copies its memory, so /proc
    shows it as large as the parent."""
    children: dict[int, list[int]] = {}
    for pid, (parent, _) in tree.items():
        children.setdefault(parent, []).append(pid)
    found: set[int] = set()
    pending = [root]
    while pending:
        for child in children.get(pending.pop(), []):
            if child not in found:
                found.add(child)
                pending.append(child)
    return {pid for pid in found if tree[pid][1] != tree.get(tree[pid][0], (0, None))[1]}


@dataclass
class MemorySampler:
    """Every SAMPLE_SECONDS, the largest resident memory of each kind of process of the run (the
    server, its jobs, the Airflow task processes: this process's other descendants), from one
    snapshot of the process tree, and the 1-minute load average."""

    server: psutil.Process | None
    samples: list[tuple[float, dict[str, int]]] = field(default_factory=list)
    loads: list[float] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> MemorySampler:
        self._thread = threading.Thread(target=self._run, name="memory-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        own = os.getpid()
        while not self._stop.wait(SAMPLE_SECONDS):
            tree = process_tree()
            server = self.server.pid if self.server and self.server.pid in tree else None
            jobs = subtree(tree, server) if server else set()
            kinds = [(pid, JOB) for pid in jobs] + ([(server, SERVER)] if server else [])
            kinds += [(pid, AIRFLOW) for pid in subtree(tree, own) - jobs - {server}]
            largest: dict[str, int] = {}
            for pid, kind in kinds:
                largest[kind] = max(largest.get(kind, 0), resident_bytes(pid))
            self.samples.append((time.time(), largest))
            self.loads.append(os.getloadavg()[0])

    def peak(self, kind: str) -> int:
        return max((largest.get(kind, 0) for _, largest in self.samples), default=0)

    def largest_during(self, intervals: list[tuple[float, float]]) -> tuple[int, str, int]:
        """(bytes, kind) of the largest process sampled within any of the intervals, and the bytes
        of the largest Airflow task process then."""
        best, airflow = (0, ""), 0
        for when, largest in self.samples:
            if any(start <= when <= end for start, end in intervals):
                airflow = max(airflow, largest.get(AIRFLOW, 0))
                for kind, resident in largest.items():
                    best = max(best, (resident, kind))
        return (*best, airflow)


@dataclass
class Measured:
    policies: int
    wall: float
    stages: dict[str, float]
    stage_memory: dict[str, tuple[int, str, int]]  # stage -> largest (bytes, kind), Airflow task bytes
    peaks: dict[str, int]  # kind -> bytes, whole run
    load: float  # median 1-minute load average during the run
    test_auc: float | None


def measure(config: StackConfig, policies: int) -> Measured:
    files = raw_files(policies)
    conf = {**DEFAULT_CONF, "claims_file": str(files["claims"]), "customers_file": str(files["customers"]),
            "ingest_mode": ingest_mode(policies), "prefix": f"scale-{policies}-{secrets.token_hex(2)}"}
    server = service_process(config, "localcloud")
    if server is None:
        print("  (the local cloud was not started by make run or make up: its processes are not measured)")
    with MemorySampler(server) as sampler:
        started = time.monotonic()
        run_id, state, seconds = run_dag(config, conf)
        wall = time.monotonic() - started
    if state != "success":
        raise RunError(f"{policies:,} policies: run {run_id} ended {state} (see reports/latest/airflow.log)")
    summary, _ = collect_results(config, run_id, state, seconds)
    intervals: dict[str, list[tuple[float, float]]] = {}
    for task_id, interval in task_intervals(airflow_home(config) / "airflow.db", run_id).items():
        intervals.setdefault(stage_of(task_id), []).append(interval)
    return Measured(
        policies=policies,
        wall=wall,
        stages=stage_seconds(seconds),
        stage_memory={stage: sampler.largest_during(spans) for stage, spans in intervals.items()},
        peaks={kind: sampler.peak(kind) for kind in KIND_MARKS},
        load=statistics.median(sampler.loads) if sampler.loads else os.getloadavg()[0],
        test_auc=summary.get("test_auc"),
    )


def exponent(n1: int, t1: float, n2: int, t2: float) -> str:
    if t1 <= 0 or t2 <= 0:
        return "-"
    return f"{math.log(t2 / t1) / math.log(n2 / n1):.2f}"


def short(policies: int) -> str:
    """5k, 200k, 1M."""
    for unit, mark in ((10**6, "M"), (10**3, "k")):
        if policies % unit == 0:
            return f"{policies // unit}{mark}"
    return str(policies)


def mib(amount: int, kind: str = "") -> str:
    return f"{amount / MIB:,.0f}" + (f" {KIND_MARKS[kind]}" if kind else "")


def print_tables(results: list[Measured]) -> None:
    sizes = [f"{r.policies:,}" for r in results]
    steps = [f"{short(a.policies)}→{short(b.policies)}" for a, b in pairwise(results)]
    stages = sorted({stage for r in results for stage in r.stages}, key=lambda s: -results[-1].stages.get(s, 0))

    def table(title: str, header: list[str], rows: list[list[str]]) -> None:
        print(f"\n{title}\n")
        widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]
        print("| " + " | ".join(cell.ljust(w) for cell, w in zip(header, widths, strict=True)) + " |")
        print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
        for row in rows:
            print("| " + " | ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in
                                    enumerate(zip(row, widths, strict=True))) + " |")

    def seconds_row(name: str, values: list[float]) -> list[str]:
        growth = [exponent(a.policies, x, b.policies, y)
                  for (a, x), (b, y) in pairwise(zip(results, values, strict=True))]
        return [name, *(f"{v:.1f}" for v in values), *growth]

    rows = [seconds_row("whole run, wall", [r.wall for r in results])]
    rows += [seconds_row(stage, [r.stages.get(stage, 0.0) for r in results]) for stage in stages]
    rows.append(["load average (1 min, median)", *(f"{r.load:.1f}" for r in results), *([""] * len(steps))])
    table("Seconds (task time of each stage) and growth exponent between sizes (1 = linear)",
          ["stage", *sizes, *(f"exp {step}" for step in steps)], rows)

    def stage_cell(result: Measured, stage: str) -> str:
        largest, kind, airflow = result.stage_memory.get(stage, (0, "", 0))
        return f"{mib(largest, kind)} / {mib(airflow)}"

    rows = [[stage, *(stage_cell(r, stage) for r in results)] for stage in stages]
    rows += [[f"whole run, largest {kind} process", *(mib(r.peaks[kind]) for r in results)] for kind in KIND_MARKS]
    legend = ", ".join(f"{mark}: {kind}" for kind, mark in KIND_MARKS.items())
    table(f"Peak RSS (MiB) while each stage ran: the largest process ({legend}) / the largest Airflow task process",
          ["stage", *sizes], rows)


def check_targets(results: list[Measured]) -> None:
    print()
    for r in results:
        if r.policies == TARGET_POLICIES:
            largest = max(r.peaks.values())
            print(f"Target {TARGET_POLICIES:,} policies in {TARGET_WALL_SECONDS // 60} min wall: "
                  f"{'met' if r.wall <= TARGET_WALL_SECONDS else 'NOT met'} ({r.wall:.0f} s).")
            print(f"Target no process above {TARGET_LARGEST_BYTES / 2**30:.0f} GiB at {TARGET_POLICIES:,}: "
                  f"{'met' if largest <= TARGET_LARGEST_BYTES else 'NOT met'} ({mib(largest)} MiB).")
    airflow = max(r.peaks[AIRFLOW] for r in results)
    print(f"Target Airflow task processes under {TARGET_AIRFLOW_BYTES / 10**6:.0f} MB at every size: "
          f"{'met' if airflow < TARGET_AIRFLOW_BYTES else 'NOT met'} (largest {airflow / 10**6:.0f} MB).")


def main(argv: list[str]) -> int:
    try:
        sizes = sorted({int(size) for size in argv}) or list(SIZES)
    except ValueError:
        print(f"SIZES must be numbers of policies, got {' '.join(argv)!r}", file=sys.stderr)
        return 2
    if sizes[0] < 1:
        print(f"SIZES must be positive, got {sizes[0]}", file=sys.stderr)
        return 2
    os.environ["LOCALCLOUD_IAM"] = ""  # see the module's docstring: the runs' prefixes are not the stack's
    config = load_config()
    results: list[Measured] = []
    status = 0
    try:
        ensure_local_cloud(config)
        for policies in sizes:
            print(f"\n{policies:,} policies, ingest_mode {ingest_mode(policies)}", flush=True)
            result = measure(config, policies)
            results.append(result)
            auc = f"{result.test_auc:.3f}" if result.test_auc is not None else "-"
            print(f"{policies:,} policies: {result.wall:.1f} s wall, load {result.load:.1f}, test AUC {auc}, "
                  f"largest process {mib(max(result.peaks.values()))} MiB", flush=True)
    except (RunError, subprocess.CalledProcessError) as error:
        print(error, file=sys.stderr)
        status = 1
    if results:
        print(f"\nfraud_detection on generated data ({os.cpu_count()} cores, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})")
        print_tables(results)
        check_targets(results)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
