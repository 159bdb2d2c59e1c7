"""How the local cloud runs a job the way a SageMaker instance would: a sandbox folder standing in
for /opt/ml, data copied between S3 and the sandbox, the container's command run in a subprocess
with its output streamed to CloudWatch Logs and its metrics read from that output, at most one
job process per CPU at once. jobs.py and tuning.py turn job descriptions into these steps."""

from __future__ import annotations

import enum
import json
import logging
import math
import os
import re
import shutil
import signal
import subprocess
import tarfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

from boto3.exceptions import S3UploadFailedError
from botocore.exceptions import BotoCoreError, ClientError

log = logging.getLogger(__name__)

CONTAINER_BASE = "/opt/ml"  # what the sandbox stands in for
HOST_NAME = "algo-1"  # a training job runs on one host, named as SageMaker names the first one
# A job runs in one slot of the job runner, and a slot is a core: what an instance is to a job on
# SageMaker. Its libraries' thread pools (OpenMP in XGBoost and scikit-learn, BLAS in numpy) are
# sized to that core. Sized to the machine, the spinning OpenMP threads of two jobs at once slowed
# both 3 to 10 times.
CPUS_PER_JOB = 1
THREAD_POOL_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
STOP_GRACE_SECONDS = 5.0  # SageMaker waits 120 s between SIGTERM and SIGKILL; locally a few do
POLL_SECONDS = 0.2
LOG_FLUSH_SECONDS = 0.5
LOG_BATCH_EVENTS = 1000
LOG_EVENT_MAX_CHARS = 256 * 1024 - 26  # a CloudWatch Logs event is at most 256 KiB with its header
STDERR_TAIL_LINES = 30
FAILURE_REASON_MAX = 1024  # FailureReason's length limit in the SageMaker API
# How SageMaker's reasons start: the job's input or request (ClientError), or its code (AlgorithmError).
ERROR_PREFIXES = ("ClientError:", "AlgorithmError:")
# The built-in XGBoost algorithm logs "[12]#011train-auc:0.93#011validation-auc:0.81"; SageMaker
# reports the last value of each as the metric "train:auc", "validation:auc".
ALGORITHM_LINE = re.compile(r"^\[\d+\]#011")
ALGORITHM_METRIC = re.compile(r"#011(train|validation)-([^:#\s]+):([^#\s]+)")


class JobFailure(Exception):
    """The job ends Failed with this FailureReason ("ClientError: ...", "AlgorithmError: ...")."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason[:FAILURE_REASON_MAX]


class JobInterrupted(Exception):
    """The job was asked to stop before its process ran to the end."""


class StopReason(enum.Enum):
    STOPPED = "Stopped"  # a Stop* call
    MAX_RUNTIME = "MaxRuntimeExceeded"  # StoppingCondition.MaxRuntimeInSeconds
    SHUTDOWN = "Shutdown"  # the local cloud is stopping


class JobControl:
    """How a job's thread learns that it must stop, and why."""

    def __init__(self) -> None:
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._reason: StopReason | None = None
        self._deadline: float | None = None

    def request_stop(self, reason: StopReason) -> None:
        with self._lock:
            # A shutdown overrides a pending stop: the job must end before the cloud does.
            if self._reason is None or reason is StopReason.SHUTDOWN:
                self._reason = reason
        self._stopping.set()

    def set_max_runtime(self, seconds: float | None) -> None:
        """Start the job's runtime clock; the first host of a job to start starts it."""
        with self._lock:
            if self._deadline is None and seconds is not None:
                self._deadline = time.monotonic() + seconds

    def stop_reason(self) -> StopReason | None:
        if self._reason is None and self._deadline is not None and time.monotonic() >= self._deadline:
            self.request_stop(StopReason.MAX_RUNTIME)
        return self._reason

    def check(self) -> None:
        """Raise JobInterrupted when the job must stop."""
        if self.stop_reason() is not None:
            raise JobInterrupted

    def wait(self, seconds: float) -> None:
        self._stopping.wait(seconds)


class JobRunner:
    """Background threads of jobs, keyed by (store kind, name). Job processes take a slot of
    CPUS_PER_JOB cores: as many run at once as the machine has slots, the others wait (still
    InProgress)."""

    def __init__(self) -> None:
        self._slots = threading.Semaphore(max(1, (os.cpu_count() or 1) // CPUS_PER_JOB))
        self._lock = threading.Lock()
        self._jobs: dict[tuple[str, str], tuple[threading.Thread, JobControl]] = {}
        self._closed = False
        # Counts job threads that ended, so that a tuning job learns of a trial's end at once.
        self._ended = threading.Condition()
        self._ended_count = 0

    def start(self, kind: str, name: str, work: Callable[[JobControl], None]) -> None:
        """Run `work` in a thread of its own; after shutdown nothing starts (the job stays as
        stored, to be ended as interrupted)."""
        control = JobControl()
        thread = threading.Thread(target=self._run, args=(kind, name, work, control), name=f"{kind}/{name}",
                                  daemon=True)
        with self._lock:
            if self._closed:
                return
            self._jobs[(kind, name)] = (thread, control)
        thread.start()

    def _run(self, kind: str, name: str, work: Callable[[JobControl], None], control: JobControl) -> None:
        try:
            work(control)
        except Exception:  # the work functions record failures themselves; this is a bug
            log.exception("%s %s crashed", kind, name)
        finally:
            with self._lock:
                self._jobs.pop((kind, name), None)
            with self._ended:
                self._ended_count += 1
                self._ended.notify_all()

    def ended_count(self) -> int:
        """How many job threads have ended so far: what wait_for_an_end waits past."""
        with self._ended:
            return self._ended_count

    def wait_for_an_end(self, seen: int, timeout: float) -> None:
        """Wait until a job thread ends after `seen` (an ended_count), or `timeout` seconds."""
        with self._ended:
            self._ended.wait_for(lambda: self._ended_count != seen, timeout)

    def stop(self, kind: str, name: str, reason: StopReason) -> bool:
        """Ask a job's thread to stop; False when no thread runs that job."""
        with self._lock:
            entry = self._jobs.get((kind, name))
        if entry is None:
            return False
        entry[1].request_stop(reason)
        return True

    @contextmanager
    def slot(self, control: JobControl) -> Iterator[None]:
        """Hold a job slot; JobInterrupted when the job is stopped while it waits for one."""
        while not self._slots.acquire(timeout=POLL_SECONDS):
            control.check()
        try:
            yield
        finally:
            self._slots.release()

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop every job thread and wait for them to record how they ended."""
        with self._lock:
            self._closed = True
            entries = list(self._jobs.values())
        for _, control in entries:
            control.request_stop(StopReason.SHUTDOWN)
        deadline = time.monotonic() + timeout
        for thread, _ in entries:
            thread.join(max(0.0, deadline - time.monotonic()))


class Sandbox:
    """A job's private folder, standing in for /opt/ml."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @classmethod
    def create(cls, root: Path) -> Sandbox:
        if root.exists():
            shutil.rmtree(root)
        root.mkdir(parents=True)
        return cls(root)

    def path(self, container_path: str) -> Path:
        """The sandbox path of an absolute /opt/ml path."""
        relative = container_relative(container_path)
        if relative is None:
            raise ValueError(f"{container_path} is not under {CONTAINER_BASE}")
        return self.root.joinpath(*relative.parts)

    def map_argument(self, argument: str) -> str:
        """A command-line argument with a leading /opt/ml mapped into the sandbox."""
        return str(self.path(argument)) if container_relative(argument) is not None else argument

    def write_json(self, container_path: str, value: Any) -> None:
        path = self.path(container_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value, indent=2))


def host_names(count: int) -> list[str]:
    """The hosts of a job of `count` instances, as SageMaker names them: algo-1, algo-2, ..."""
    return [f"algo-{number}" for number in range(1, count + 1)]


def container_relative(path: str) -> PurePosixPath | None:
    """The part of an /opt/ml path below /opt/ml; None when the path is elsewhere or escapes."""
    pure = PurePosixPath(path)
    if not pure.is_relative_to(CONTAINER_BASE) or ".." in pure.parts:
        return None
    return pure.relative_to(CONTAINER_BASE)


def container_environment(cloud_url: str, region: str, sandbox: Sandbox, credentials: dict[str, str]) -> dict[str, str]:
    """The environment of a container with an execution role (`credentials`: its AWS_* keys),
    whose AWS calls reach the local cloud. Nothing else of the server's environment leaks in."""
    environment = {name: os.environ[name] for name in ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR")
                   if name in os.environ}
    environment.update(
        SAGEMAKER_BASE_DIR=str(sandbox.root),
        AWS_ENDPOINT_URL=cloud_url,
        AWS_DEFAULT_REGION=region,
        AWS_REGION=region,
        PYTHONUNBUFFERED="1",  # log lines reach CloudWatch as they are printed
        **{variable: str(CPUS_PER_JOB) for variable in THREAD_POOL_VARIABLES},
        **credentials,
    )
    return environment


# -- S3 ------------------------------------------------------------------------------------------
def split_s3_uri(uri: str) -> tuple[str, str]:
    if not uri.startswith("s3://"):
        raise JobFailure(f"ClientError: {uri} is not an s3:// URI; the local cloud reads and writes S3 only.")
    bucket, _, key = uri[len("s3://"):].partition("/")
    return bucket, key


def download_s3_prefix(s3: Any, uri: str, destination: Path, control: JobControl,
                       shard: tuple[int, int] = (0, 1)) -> None:
    """Copy every object under an S3 prefix into `destination`, as SageMaker's S3Prefix data type
    does: s3://b/data/train holds data/train/part.csv, which lands as <destination>/part.csv.
    With `shard` (index, count), as ShardedByS3Key does for the instance of that index: every
    count-th object in key order from the index-th, so instances get disjoint shards (one may
    get none when there are fewer objects than instances)."""
    bucket, prefix = split_s3_uri(uri)
    index, count = shard
    destination.mkdir(parents=True, exist_ok=True)
    found = 0
    try:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                key = item["Key"]
                if key.endswith("/"):  # a folder marker, not data
                    continue
                found += 1
                if (found - 1) % count != index:
                    continue
                target = _inside(destination, relative_key(key, prefix), uri)
                target.parent.mkdir(parents=True, exist_ok=True)
                s3.download_file(bucket, key, str(target))
                control.check()
    except (BotoCoreError, ClientError) as exc:
        raise JobFailure(f"ClientError: Data download failed from {uri}: {exc}") from exc
    if found == 0:
        raise JobFailure(f'ClientError: No S3 objects found under S3 URL "{uri}" given in input data source. '
                         "Please ensure that the bucket exists and that objects exist under that S3 prefix.")


def relative_key(key: str, prefix: str) -> str:
    """Where an object found under a prefix lands: below the prefix when it names a folder or the
    object itself, else below the folder the prefix is in (s3://b/data/tr finds data/train/x)."""
    if key == prefix:
        return key.rsplit("/", 1)[-1]
    if not prefix or prefix.endswith("/") or key[len(prefix)] == "/":
        return key[len(prefix):]
    return key[prefix.rfind("/") + 1:]


def _inside(destination: Path, relative_key: str, uri: str) -> Path:
    """The local file of an S3 key below `destination`; a key that would land elsewhere fails the job."""
    parts = [part for part in relative_key.split("/") if part not in ("", ".")]
    target = destination.joinpath(*parts)
    if not parts or ".." in parts or not target.resolve().is_relative_to(destination.resolve()):
        raise JobFailure(f"ClientError: The S3 object {relative_key!r} under {uri} would be written outside "
                         "its input directory.")
    return target


# What boto3's upload_file raises when S3 refuses (AccessDenied, a missing bucket): its transfer
# wraps the ClientError in an S3UploadFailedError, which is neither.
UPLOAD_ERRORS = (BotoCoreError, ClientError, S3UploadFailedError)


def upload_directory(s3: Any, source: Path, uri: str) -> None:
    """Copy every file under `source` to the S3 prefix `uri`, keeping relative paths."""
    bucket, prefix = split_s3_uri(uri)
    prefix = prefix.rstrip("/")
    try:
        for path in sorted(p for p in source.rglob("*") if p.is_file()):
            relative = path.relative_to(source).as_posix()
            s3.upload_file(str(path), bucket, f"{prefix}/{relative}" if prefix else relative)
    except UPLOAD_ERRORS as exc:
        raise JobFailure(f"ClientError: Uploading {source.name} to {uri} failed: {exc}") from exc


def upload_file(s3: Any, path: Path, uri: str) -> None:
    bucket, key = split_s3_uri(uri)
    try:
        s3.upload_file(str(path), bucket, key)
    except UPLOAD_ERRORS as exc:
        raise JobFailure(f"ClientError: Uploading {path.name} to {uri} failed: {exc}") from exc


def tar_directory(source: Path, target: Path) -> None:
    """A .tar.gz of the files under `source`, at the archive's root (model.tar.gz's layout)."""
    with tarfile.open(target, "w:gz") as archive:
        for path in sorted(source.rglob("*")):
            archive.add(path, arcname=path.relative_to(source).as_posix(), recursive=False)


# -- Logs and metrics ----------------------------------------------------------------------------
class CloudWatchLog:
    """A log stream that lines are appended to; a background thread ships them in batches."""

    def __init__(self, logs: Any, group: str, stream: str) -> None:
        self._logs = logs
        self.group = group
        self.stream = stream
        for create, kwargs in ((logs.create_log_group, {"logGroupName": group}),
                               (logs.create_log_stream, {"logGroupName": group, "logStreamName": stream})):
            try:
                create(**kwargs)
            except logs.exceptions.ResourceAlreadyExistsException:
                pass
        self._pending: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._last_timestamp = 0
        self._closed = threading.Event()
        self._shipper = threading.Thread(target=self._ship, name=f"logs {stream}", daemon=True)
        self._shipper.start()

    def write(self, line: str) -> None:
        if not line.strip():  # CloudWatch Logs takes no empty events
            return
        with self._lock:
            # Events of a batch must be in time order, even with stdout and stderr interleaved.
            self._last_timestamp = max(self._last_timestamp, int(time.time() * 1000))
            self._pending.append({"timestamp": self._last_timestamp, "message": line[:LOG_EVENT_MAX_CHARS]})

    def close(self) -> None:
        self._closed.set()
        self._shipper.join()
        self._flush()

    def __enter__(self) -> CloudWatchLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _ship(self) -> None:
        while not self._closed.wait(LOG_FLUSH_SECONDS):
            self._flush()

    def _flush(self) -> None:
        with self._lock:
            events, self._pending = self._pending, []
        for start in range(0, len(events), LOG_BATCH_EVENTS):
            try:
                self._logs.put_log_events(logGroupName=self.group, logStreamName=self.stream,
                                          logEvents=events[start:start + LOG_BATCH_EVENTS])
            except (BotoCoreError, ClientError):  # lost log lines must not fail the job
                log.exception("could not ship log events to %s %s", self.group, self.stream)


class MetricCollector:
    """The final value of each metric of a training job, read from its log lines as SageMaker does:
    each metric definition's regex captures the value in its first group; the last value wins.
    The built-in algorithm's own metrics are read from its evaluation lines."""

    def __init__(self, definitions: list[dict[str, str]], algorithm_metrics: bool) -> None:
        self._definitions = [(d["Name"], re.compile(d["Regex"])) for d in definitions]
        self._algorithm_metrics = algorithm_metrics
        self._values: dict[str, tuple[float, float]] = {}

    def feed(self, line: str) -> None:
        for name, regex in self._definitions:
            if (found := regex.search(line)) and found.groups():
                self._record(name, found.group(1))
        if self._algorithm_metrics and ALGORITHM_LINE.match(line):
            for found in ALGORITHM_METRIC.finditer(line):
                self._record(f"{found.group(1)}:{found.group(2)}", found.group(3))

    def _record(self, name: str, text: str) -> None:
        try:
            value = float(text)
        except ValueError:
            return
        if math.isfinite(value):
            self._values[name] = (value, time.time())

    def final_metrics(self) -> list[dict[str, Any]]:
        return [{"MetricName": name, "Value": value, "Timestamp": when}
                for name, (value, when) in self._values.items()]


# -- Processes -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ProcessOutcome:
    exit_code: int
    stderr_tail: list[str]


def run_process(argv: list[str], environment: dict[str, str], cwd: Path, control: JobControl,
                on_line: Callable[[str], None]) -> ProcessOutcome:
    """Run a job's command until it exits or the job must stop (SIGTERM, then SIGKILL after a grace
    period, to its whole process group). Each output line goes to `on_line`, one at a time."""
    try:
        process = subprocess.Popen(argv, cwd=cwd, env=environment, stdin=subprocess.DEVNULL,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    except OSError as exc:
        raise JobFailure(f"ClientError: Cannot run {argv[0]}: {exc.strerror}") from exc
    stderr_tail: deque[str] = deque(maxlen=STDERR_TAIL_LINES)
    lock = threading.Lock()

    def pump(stream: IO[bytes], tail: deque[str] | None) -> None:
        for raw in stream:
            line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            with lock:
                on_line(line)
                if tail is not None:
                    tail.append(line)

    readers = [threading.Thread(target=pump, args=(process.stdout, None), daemon=True),
               threading.Thread(target=pump, args=(process.stderr, stderr_tail), daemon=True)]
    for reader in readers:
        reader.start()
    while True:
        try:
            process.wait(timeout=POLL_SECONDS)
            break
        except subprocess.TimeoutExpired:
            if control.stop_reason() is not None:
                _terminate(process)
                break
    for reader in readers:
        reader.join(timeout=1.0)
    if any(reader.is_alive() for reader in readers):
        # Children the command left behind hold its output open. A container's processes end
        # with its entrypoint: so do these (their process group still exists, so it is theirs).
        _signal_group(process, signal.SIGKILL)
    for reader in readers:
        reader.join()
    return ProcessOutcome(process.returncode, list(stderr_tail))


def _terminate(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the command's process group, SIGKILL if it has not ended after the grace period."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        _signal_group(process, sig)
        try:
            process.wait(timeout=STOP_GRACE_SECONDS)
            return
        except subprocess.TimeoutExpired:
            continue


def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    try:
        os.killpg(process.pid, sig)  # the command leads its own group (start_new_session)
    except ProcessLookupError:
        pass


def exit_message(sandbox: Sandbox) -> str | None:
    """What a processing container wrote to /opt/ml/output/message: DescribeProcessingJob's
    ExitMessage, its first KB (the processing contract)."""
    message_file = sandbox.path(f"{CONTAINER_BASE}/output/message")
    if not message_file.is_file():
        return None
    return message_file.read_bytes()[:FAILURE_REASON_MAX].decode(errors="replace")


def failure_reason(sandbox: Sandbox, outcome: ProcessOutcome, message: str | None = None) -> str:
    """Why a job's process failed: what it wrote to /opt/ml/output/failure (the training
    contract) or, for a processing job, a "ClientError: ..." or "AlgorithmError: ..." exit
    `message`; else the tail of its standard error."""
    failure_file = sandbox.path(f"{CONTAINER_BASE}/output/failure")
    if failure_file.is_file() and (written := failure_file.read_text(errors="replace").strip()):
        if written.startswith(ERROR_PREFIXES):
            return written[:FAILURE_REASON_MAX]
        return f"AlgorithmError: {written}"[:FAILURE_REASON_MAX]
    if message and message.startswith(ERROR_PREFIXES):
        return message.strip()
    prefix = "AlgorithmError: "
    lines = [line for line in "\n".join(outcome.stderr_tail).strip().splitlines() if line.strip()]
    if not lines:
        return f"{prefix}The process exited with status {outcome.exit_code}."
    # Whole lines from the end, the last (the error, as a script ends) at least: a reason that
    # starts mid-line loses what its line leads with (the file, the exception type).
    kept = [lines.pop()]
    while lines and len(prefix) + sum(len(line) + 1 for line in kept) + len(lines[-1]) <= FAILURE_REASON_MAX:
        kept.insert(0, lines.pop())
    reason = prefix + "\n".join(kept)
    return reason if len(reason) <= FAILURE_REASON_MAX else reason[: FAILURE_REASON_MAX - 1] + "…"
