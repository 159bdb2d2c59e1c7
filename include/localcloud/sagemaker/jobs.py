"""SageMaker processing and training jobs: Create/Describe/List/Stop, and their execution in the
background following the SageMaker container contract (see sandbox.py for the mechanics).

A job is InProgress as soon as it is created. Its thread waits for a job slot, copies its inputs
from S3 into its sandbox (<state dir>/jobs/<kind>/<name>, standing in for /opt/ml), runs the
runner chosen from its image (a processing job on each of its hosts at once), streams the output
to CloudWatch Logs, uploads the outputs to S3 and records how it ended: Completed, Failed with a
FailureReason, or Stopped. The sandboxes of the newest finished jobs stay, to look into; older
ones are removed."""

from __future__ import annotations

import json
import logging
import shutil
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from include.localcloud.protocol import AwsError, RequestContext, not_found
from include.localcloud.sagemaker.containers import CLARIFY_PROCESSOR, XGBOOST_ALGORITHM
from include.localcloud.sagemaker.models import (
    CLARIFY_IMAGE,
    XGBOOST_IMAGE,
    Resource,
    image_repository,
    list_page,
    now,
    pick,
    region_of,
    sagemaker_arn,
)
from include.localcloud.sagemaker.sandbox import (
    CONTAINER_BASE,
    CPUS_PER_JOB,
    HOST_NAME,
    CloudWatchLog,
    JobControl,
    JobFailure,
    JobInterrupted,
    JobRunner,
    MetricCollector,
    Sandbox,
    StopReason,
    container_environment,
    container_relative,
    download_s3_prefix,
    exit_message,
    failure_reason,
    host_names,
    run_process,
    tar_directory,
    upload_directory,
    upload_file,
)
from include.localcloud.sagemaker.tags import save_tags

if TYPE_CHECKING:
    from botocore.model import ServiceModel

    from include.localcloud.server import LocalCloud

log = logging.getLogger(__name__)

ACTIVE_STATUSES = ("InProgress", "Stopping")
TERMINAL_STATUSES = ("Completed", "Failed", "Stopped")
KEPT_SANDBOXES = 20  # of finished jobs, per kind
# SageMaker's words for a job its platform lost: InternalServerError, which a retry may mend.
LOCAL_CLOUD_STOPPED = ("InternalServerError: The job was interrupted: the local cloud stopped while it was running. "
                       "Please try again.")
DEFAULT_MAX_RUNTIME_SECONDS = 86400  # SageMaker's StoppingCondition when a training job gives none
SCRIPT_IMAGES = ("sagemaker-scikit-learn", XGBOOST_IMAGE)  # processing: run the given entrypoint
PROCESSING_PATH = f"{CONTAINER_BASE}/processing/"  # ProcessingInput/Output LocalPaths live below it


@dataclass(frozen=True)
class JobKind:
    """What differs between processing and training jobs in their API and their storage."""

    store_kind: str  # also the ARN's resource type
    label: str  # as SageMaker's messages name it
    prefix: str  # of the API members: TrainingJobName, TrainingJobStatus, TrainingStartTime...
    log_group: str

    @property
    def name_key(self) -> str:
        return f"{self.prefix}JobName"

    @property
    def arn_key(self) -> str:
        return f"{self.prefix}JobArn"

    @property
    def status_key(self) -> str:
        return f"{self.prefix}JobStatus"

    @property
    def start_key(self) -> str:
        return f"{self.prefix}StartTime"

    @property
    def end_key(self) -> str:
        return f"{self.prefix}EndTime"


PROCESSING = JobKind("processing-job", "processing job", "Processing", "/aws/sagemaker/ProcessingJobs")
TRAINING = JobKind("training-job", "training job", "Training", "/aws/sagemaker/TrainingJobs")


def name_in_use(label: str, arn: str) -> AwsError:
    # What SageMaker answers when a job name is taken (a job name can never be reused).
    return AwsError("ResourceInUse", f"{label.capitalize()} names must be unique within an AWS account and "
                                     f"region, and a {label} with this name already exists ({arn})")


def unsupported_image(image: str, supported: tuple[str, ...]) -> JobFailure:
    return JobFailure(f"ClientError: The image {image} is not supported by the local cloud, which runs "
                      f"{', '.join(supported)} images for this kind of job.")


def modified_between(items: list[Resource], params: dict[str, Any]) -> list[Resource]:
    """The LastModifiedTimeAfter/Before filters of List* calls."""
    if (after := params.get("LastModifiedTimeAfter")) is not None:
        items = [item for item in items if item["LastModifiedTime"] > float(after)]
    if (before := params.get("LastModifiedTimeBefore")) is not None:
        items = [item for item in items if item["LastModifiedTime"] < float(before)]
    return items


def add_transition(job: Resource, status: str, message: str, when: float, final: bool = False) -> None:
    """Move a training job to a secondary status, as DescribeTrainingJob shows the history."""
    transitions = job.setdefault("SecondaryStatusTransitions", [])
    if transitions and "EndTime" not in transitions[-1]:
        transitions[-1]["EndTime"] = when
    transition = {"Status": status, "StartTime": when, "StatusMessage": message}
    if final:
        transition["EndTime"] = when
    transitions.append(transition)
    job["SecondaryStatus"] = status
    job["LastModifiedTime"] = when


def check_local_path(where: str, path: str | None) -> None:
    relative = container_relative(path or "")
    if relative is None or not f"{CONTAINER_BASE}/{relative}".startswith(PROCESSING_PATH):
        raise AwsError("ValidationException",
                       f"{where}.LocalPath {path!r} must be an absolute path beginning with {PROCESSING_PATH}.")


def check_processing_request(params: dict[str, Any]) -> None:
    """What SageMaker checks of a processing job beyond the API model, and what the local cloud
    needs: S3 inputs and outputs with LocalPaths under /opt/ml/processing/."""
    names: set[str] = set()
    for i, item in enumerate(params.get("ProcessingInputs", []), 1):
        where = f"ProcessingInputs.{i}"
        if "S3Input" not in item:
            raise AwsError("ValidationException", f"{where}: the local cloud supports S3Input inputs only.")
        check_local_path(f"{where}.S3Input", item["S3Input"].get("LocalPath"))
        if item["InputName"] in names:
            raise AwsError("ValidationException", f"{where}: InputName {item['InputName']!r} is not unique.")
        names.add(item["InputName"])
    for i, item in enumerate(params.get("ProcessingOutputConfig", {}).get("Outputs", []), 1):
        where = f"ProcessingOutputConfig.Outputs.{i}"
        if "S3Output" not in item:
            raise AwsError("ValidationException", f"{where}: the local cloud supports S3Output outputs only.")
        check_local_path(f"{where}.S3Output", item["S3Output"].get("LocalPath"))


def check_training_request(params: dict[str, Any]) -> None:
    """What a training job needs beyond the API model: an image, instances, unique channels."""
    spec = params.get("AlgorithmSpecification") or {}
    if not spec.get("TrainingImage") and not spec.get("AlgorithmName"):
        raise AwsError("ValidationException", "AlgorithmSpecification must name a TrainingImage or an AlgorithmName.")
    resources = params.get("ResourceConfig") or {}
    if not resources.get("InstanceType") or not resources.get("InstanceCount"):
        raise AwsError("ValidationException", "ResourceConfig must give an InstanceType and an InstanceCount.")
    channels = [channel["ChannelName"] for channel in params.get("InputDataConfig", [])]
    if len(channels) != len(set(channels)):
        raise AwsError("ValidationException", f"InputDataConfig channel names must be unique: {channels}.")


def training_command(job: Resource) -> list[str]:
    """The runner of a training job, from its image: the built-in XGBoost algorithm."""
    image = job["AlgorithmSpecification"].get("TrainingImage") or job["AlgorithmSpecification"]["AlgorithmName"]
    if image_repository(image) != XGBOOST_IMAGE:
        raise unsupported_image(image, (XGBOOST_IMAGE,))
    if "sagemaker_program" in job.get("HyperParameters", {}):
        raise JobFailure("ClientError: Script mode (the sagemaker_program hyperparameter) is not supported by the "
                         "local cloud, which trains with the built-in XGBoost algorithm.")
    for channel in job.get("InputDataConfig", []):
        source = channel["DataSource"].get("S3DataSource")
        if source is None or source["S3DataType"] != "S3Prefix":
            raise JobFailure(f"ClientError: Channel {channel['ChannelName']}: the local cloud reads S3DataSource "
                             "channels of S3DataType S3Prefix only.")
        if (channel.get("InputMode") or job["AlgorithmSpecification"]["TrainingInputMode"]) == "Pipe":
            raise JobFailure(f"ClientError: Channel {channel['ChannelName']}: Pipe input mode is not supported "
                             "by the local cloud; use File.")
    return [sys.executable, str(XGBOOST_ALGORITHM)]


def processing_command(job: Resource, sandbox: Sandbox) -> list[str]:
    """The runner of a processing job, from its image: the Clarify container's script, or the
    job's own entrypoint and arguments with /opt/ml mapped into the sandbox."""
    app = job["AppSpecification"]
    repository = image_repository(app["ImageUri"])
    for item in job.get("ProcessingInputs", []):
        if item["S3Input"]["S3DataType"] != "S3Prefix" or item["S3Input"].get("S3InputMode") == "Pipe":
            raise JobFailure(f"ClientError: Input {item['InputName']}: the local cloud reads S3Prefix inputs in "
                             "File mode only.")
    if repository == CLARIFY_IMAGE:
        return [sys.executable, str(CLARIFY_PROCESSOR)]
    if repository not in SCRIPT_IMAGES:
        raise unsupported_image(app["ImageUri"], (*SCRIPT_IMAGES, CLARIFY_IMAGE))
    if not app.get("ContainerEntrypoint"):
        raise JobFailure(f"ClientError: AppSpecification.ContainerEntrypoint is required to run a {repository} "
                         "image in the local cloud.")
    argv = [sandbox.map_argument(a) for a in app["ContainerEntrypoint"] + app.get("ContainerArguments", [])]
    if argv[0] in ("python", "python3"):  # the container's interpreter: here, the local cloud's own
        argv[0] = sys.executable
    return argv


def training_environment(job: Resource, sandbox: Sandbox, resource_config: Resource) -> dict[str, str]:
    """The SM_* variables the SageMaker training toolkit gives a training container."""
    hyperparameters = job.get("HyperParameters", {})
    channels = [channel["ChannelName"] for channel in job.get("InputDataConfig", [])]

    def decoded(value: str) -> Any:
        try:
            return json.loads(value)
        except ValueError:
            return value

    environment = {
        "SM_MODEL_DIR": str(sandbox.path(f"{CONTAINER_BASE}/model")),
        "SM_INPUT_DIR": str(sandbox.path(f"{CONTAINER_BASE}/input")),
        "SM_INPUT_CONFIG_DIR": str(sandbox.path(f"{CONTAINER_BASE}/input/config")),
        "SM_OUTPUT_DIR": str(sandbox.path(f"{CONTAINER_BASE}/output")),
        "SM_OUTPUT_DATA_DIR": str(sandbox.path(f"{CONTAINER_BASE}/output/data")),
        "SM_OUTPUT_INTERMEDIATE_DIR": str(sandbox.path(f"{CONTAINER_BASE}/output/intermediate")),
        "SM_CHANNELS": json.dumps(sorted(channels)),
        "SM_HPS": json.dumps({key: decoded(value) for key, value in hyperparameters.items()}),
        "SM_CURRENT_HOST": HOST_NAME,
        "SM_HOSTS": json.dumps([HOST_NAME]),
        "SM_CURRENT_INSTANCE_TYPE": resource_config["current_instance_type"],
        "SM_NUM_CPUS": str(CPUS_PER_JOB),
        "SM_NUM_GPUS": "0",
        "SM_RESOURCE_CONFIG": json.dumps(resource_config),
    }
    environment.update({f"SM_CHANNEL_{name.upper()}": str(sandbox.path(f"{CONTAINER_BASE}/input/data/{name}"))
                        for name in channels})
    environment.update({f"SM_HP_{key.upper()}": value for key, value in hyperparameters.items()})
    return environment


class JobOperations:
    """CreateProcessingJob, CreateTrainingJob and their Describe/List/Stop operations."""

    cloud: LocalCloud
    model: ServiceModel

    def __init__(self, cloud: LocalCloud) -> None:
        super().__init__(cloud)  # type: ignore[call-arg]
        self.job_runner = JobRunner()

    # -- processing jobs -----------------------------------------------------------------------
    def create_processing_job(self, params: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        check_processing_request(params)
        job = self._new_job(PROCESSING, params, ctx)
        self._start_job(PROCESSING, job[PROCESSING.name_key], self._run_processing_job)
        return {"ProcessingJobArn": job["ProcessingJobArn"]}

    def describe_processing_job(self, params: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        return self._job(PROCESSING, params["ProcessingJobName"])

    def list_processing_jobs(self, params: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        return self._list_jobs(PROCESSING, params, "ProcessingJobSummaries", "ProcessingJobSummary")

    def stop_processing_job(self, params: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        self._stop_job(PROCESSING, params["ProcessingJobName"])
        return {}

    # -- training jobs -------------------------------------------------------------------------
    def create_training_job(self, params: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        return {"TrainingJobArn": self.start_training_job(params, ctx)}

    def start_training_job(self, params: dict[str, Any], ctx: RequestContext,
                           tuning_job_arn: str | None = None) -> str:
        """Create a training job and start running it; tuning jobs create their trials here."""
        check_training_request(params)
        extra: dict[str, Any] = {
            "StoppingCondition": params.get("StoppingCondition") or {"MaxRuntimeInSeconds": DEFAULT_MAX_RUNTIME_SECONDS},
            "EnableNetworkIsolation": params.get("EnableNetworkIsolation", False),
            "EnableInterContainerTrafficEncryption": params.get("EnableInterContainerTrafficEncryption", False),
            "EnableManagedSpotTraining": params.get("EnableManagedSpotTraining", False),
        }
        if tuning_job_arn:
            extra["TuningJobArn"] = tuning_job_arn
        job = self._new_job(TRAINING, params, ctx, extra)
        self._start_job(TRAINING, job["TrainingJobName"], self._run_training_job)
        return job["TrainingJobArn"]

    def describe_training_job(self, params: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        return self._job(TRAINING, params["TrainingJobName"])

    def list_training_jobs(self, params: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        return self._list_jobs(TRAINING, params, "TrainingJobSummaries", "TrainingJobSummary")

    def stop_training_job(self, params: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        self._stop_job(TRAINING, params["TrainingJobName"])
        return {}

    # -- lifecycle of the local cloud ----------------------------------------------------------
    def start_jobs(self) -> None:
        """After a crash, jobs the store still shows running end Failed: no process runs them."""
        self._fail_interrupted_jobs()

    def stop_jobs(self) -> None:
        """Kill every running job, tuning jobs' trials included; each ends Failed, saying why."""
        self.job_runner.shutdown()
        self._fail_interrupted_jobs()  # those whose thread did not finish in time

    def _fail_interrupted_jobs(self) -> None:
        for kind in (PROCESSING, TRAINING):
            for job in self.cloud.store.list(kind.store_kind):
                if job[kind.status_key] in ACTIVE_STATUSES:
                    self._end_job(kind, job[kind.name_key], StopReason.SHUTDOWN, None)

    # -- shared by both kinds ------------------------------------------------------------------
    def _new_job(self, kind: JobKind, params: dict[str, Any], ctx: RequestContext,
                 extra: dict[str, Any] | None = None) -> Resource:
        name = params[kind.name_key]
        created = now()
        described = self.model.operation_model(f"Describe{kind.prefix}Job").output_shape.members
        job = {key: value for key, value in params.items() if key in described}
        job.update({
            kind.arn_key: sagemaker_arn(ctx, kind.store_kind, name),
            kind.status_key: "InProgress",
            "CreationTime": created,
            "LastModifiedTime": created,
            **(extra or {}),
        })
        if kind is TRAINING:
            add_transition(job, "Starting", "Launching requested ML instances", created)
        if not self.cloud.store.insert(kind.store_kind, name, job):
            existing = self._job(kind, name)
            raise name_in_use(kind.label, existing[kind.arn_key])
        save_tags(self.cloud.store, job[kind.arn_key], params.get("Tags"))
        return job

    def _job(self, kind: JobKind, name: str) -> Resource:
        job = self.cloud.store.get(kind.store_kind, name)
        if job is None:
            raise not_found()
        return job

    def _update(self, kind: JobKind, name: str, change: Callable[[Resource], None]) -> None:
        self.cloud.store.update(kind.store_kind, name, change)

    def _list_jobs(self, kind: JobKind, params: dict[str, Any], result_key: str, summary_shape: str) -> dict[str, Any]:
        jobs = modified_between(self.cloud.store.list(kind.store_kind), params)
        page, token = list_page(jobs, params, name_key=kind.name_key, status_key=kind.status_key)
        summary_keys = self.model.shape_for(summary_shape).members
        result: dict[str, Any] = {result_key: [pick(job, *summary_keys) for job in page]}
        if token:
            result["NextToken"] = token
        return result

    def _stop_job(self, kind: JobKind, name: str) -> None:
        stopping = now()

        def change(job: Resource) -> None:
            status = job[kind.status_key]
            if status == "Stopping":
                return
            if status != "InProgress":
                raise AwsError("ValidationException",
                               f"The request was rejected because the {kind.label} is in status {status}.")
            job[kind.status_key] = "Stopping"
            job["LastModifiedTime"] = stopping
            if kind is TRAINING:
                add_transition(job, "Stopping", "Stopping the training job", stopping)

        if self.cloud.store.update(kind.store_kind, name, change) is None:
            raise not_found()
        if not self.job_runner.stop(kind.store_kind, name, StopReason.STOPPED):
            self._end_job(kind, name, StopReason.STOPPED, None)  # its thread has just ended

    def _start_job(self, kind: JobKind, name: str, run: Callable[[str, JobControl], None]) -> None:
        def work(control: JobControl) -> None:
            if self._job(kind, name)[kind.status_key] in TERMINAL_STATUSES:
                return  # stopped before its thread was known; the stop recorded its end
            failure = None
            try:
                control.check()
                run(name, control)
            except JobInterrupted:
                pass
            except JobFailure as exc:
                failure = exc.reason
            except Exception as exc:  # a bug of the local cloud: the job must still end
                log.exception("%s %s failed unexpectedly", kind.label, name)
                failure = f"InternalServerError: {exc}"
            self._end_job(kind, name, control.stop_reason(), failure)
            self._prune_sandboxes(kind)

        self.job_runner.start(kind.store_kind, name, work)

    def _prune_sandboxes(self, kind: JobKind) -> None:
        """Keep the sandboxes of the newest KEPT_SANDBOXES finished jobs of a kind, to look into;
        older ones go, as an instance's storage does (outputs are in S3, logs in CloudWatch)."""
        folder = self.cloud.state_dir / "jobs" / kind.store_kind
        finished: list[tuple[float, Path]] = []
        for sandbox in folder.iterdir() if folder.is_dir() else ():
            job = self.cloud.store.get(kind.store_kind, sandbox.name)
            if job is None or job[kind.status_key] in TERMINAL_STATUSES:
                with suppress(OSError):  # another job's pruning got there first
                    finished.append((sandbox.stat().st_mtime, sandbox))
        finished.sort(reverse=True)
        for _, sandbox in finished[KEPT_SANDBOXES:]:
            shutil.rmtree(sandbox, ignore_errors=True)

    def _end_job(self, kind: JobKind, name: str, reason: StopReason | None, failure: str | None) -> None:
        """Record how a job ended: a stop decides, then a failure, else it Completed."""
        ended = now()

        def change(job: Resource) -> None:
            if job[kind.status_key] in TERMINAL_STATUSES:
                return
            reason_text = failure
            if reason is StopReason.SHUTDOWN:
                status, reason_text = "Failed", LOCAL_CLOUD_STOPPED
            elif reason is not None:
                status = "Stopped"
            else:
                status = "Failed" if failure else "Completed"
            job[kind.status_key] = status
            if status == "Failed":
                job["FailureReason"] = reason_text
            if kind.start_key in job:
                job[kind.end_key] = ended
            job["LastModifiedTime"] = ended
            if kind is TRAINING:
                self._end_training(job, status, reason, ended)

        self._update(kind, name, change)

    @staticmethod
    def _end_training(job: Resource, status: str, reason: StopReason | None, ended: float) -> None:
        secondary, message = {
            "Completed": ("Completed", "Training job completed"),
            "Failed": ("Failed", "Training job failed"),
            "Stopped": ("Stopped", "Training job stopped"),
        }[status]
        if reason is StopReason.MAX_RUNTIME:
            secondary, message = "MaxRuntimeExceeded", "Training job exceeded MaxRuntimeInSeconds provided"
        add_transition(job, secondary, message, ended, final=True)
        if "TrainingStartTime" in job:
            seconds = max(1, round(ended - job["TrainingStartTime"]))
            job["TrainingTimeInSeconds"] = seconds
            job["BillableTimeInSeconds"] = seconds * job["ResourceConfig"]["InstanceCount"]

    def _new_sandbox(self, kind: JobKind, name: str) -> Sandbox:
        return Sandbox.create(self.cloud.state_dir / "jobs" / kind.store_kind / name)

    def _log(self, kind: JobKind, name: str, region: str, role_arn: str | None,
             host: str = HOST_NAME) -> CloudWatchLog:
        return CloudWatchLog(self.cloud.client("logs", region, role_arn), kind.log_group,
                             f"{name}/{host}-{int(now())}")

    # -- running a processing job --------------------------------------------------------------
    def _run_processing_job(self, name: str, control: JobControl) -> None:
        """Run the job's InstanceCount hosts at once, each in a job slot of its own with its own
        sandbox (<job folder>/<host>), its shard of ShardedByS3Key inputs, its resourceconfig.json
        and its log stream; each host uploads its outputs. The first failed host fails the job."""
        job = self._job(PROCESSING, name)
        hosts = host_names(job["ProcessingResources"]["ClusterConfig"]["InstanceCount"])
        folder = self._new_sandbox(PROCESSING, name).root
        sandboxes = [Sandbox.create(folder / host) for host in hosts]
        commands = [processing_command(job, sandbox) for sandbox in sandboxes]
        if len(hosts) == 1:
            self._run_processing_host(job, hosts, 0, sandboxes[0], commands[0], control)
            return
        with ThreadPoolExecutor(len(hosts), thread_name_prefix=f"processing-job/{name}") as pool:
            futures = [pool.submit(self._run_processing_host, job, hosts, index, sandbox, command, control)
                       for index, (sandbox, command) in enumerate(zip(sandboxes, commands, strict=True))]
        errors = [future.exception() for future in futures if future.exception() is not None]
        if errors:  # a failure says why; else a stop or a bug of the local cloud
            raise next((error for error in errors if isinstance(error, JobFailure)), errors[0])

    def _run_processing_host(self, job: Resource, hosts: list[str], index: int, sandbox: Sandbox,
                             command: list[str], control: JobControl) -> None:
        name, host = job["ProcessingJobName"], hosts[index]
        region = region_of(job["ProcessingJobArn"])
        outputs = job.get("ProcessingOutputConfig", {}).get("Outputs", [])
        with self.job_runner.slot(control):
            self._update(PROCESSING, name, lambda body: body.setdefault("ProcessingStartTime", now()))
            control.set_max_runtime((job.get("StoppingCondition") or {}).get("MaxRuntimeInSeconds"))
            s3 = self.cloud.client("s3", region, job["RoleArn"])
            for item in job.get("ProcessingInputs", []):
                source = item["S3Input"]
                sharded = source.get("S3DataDistributionType") == "ShardedByS3Key"
                download_s3_prefix(s3, source["S3Uri"], sandbox.path(source["LocalPath"]), control,
                                   shard=(index, len(hosts)) if sharded else (0, 1))
            for output in outputs:
                sandbox.path(output["S3Output"]["LocalPath"]).mkdir(parents=True, exist_ok=True)
            sandbox.write_json(f"{CONTAINER_BASE}/config/processingjobconfig.json", job)
            sandbox.write_json(f"{CONTAINER_BASE}/config/resourceconfig.json",
                               {"current_host": host, "hosts": hosts})
            credentials = self.cloud.container_credentials(job["RoleArn"])
            environment = {**container_environment(self.cloud.url, region, sandbox, credentials),
                           **job.get("Environment", {})}
            with self._log(PROCESSING, name, region, job["RoleArn"], host) as log_stream:
                outcome = run_process(command, environment, sandbox.root, control, log_stream.write)
            message = exit_message(sandbox)
            if message is not None:
                self._update(PROCESSING, name, lambda body: body.update(ExitMessage=message))
            control.check()
            if outcome.exit_code != 0:
                raise JobFailure(failure_reason(sandbox, outcome, message))
            for output in outputs:
                upload_directory(s3, sandbox.path(output["S3Output"]["LocalPath"]), output["S3Output"]["S3Uri"])

    # -- running a training job ----------------------------------------------------------------
    def _run_training_job(self, name: str, control: JobControl) -> None:
        job = self._job(TRAINING, name)
        region = region_of(job["TrainingJobArn"])
        sandbox = self._new_sandbox(TRAINING, name)
        command = training_command(job)
        with self.job_runner.slot(control):
            self._advance_training(name, "Downloading", "Downloading input data", TrainingStartTime=now())
            control.set_max_runtime(job["StoppingCondition"].get("MaxRuntimeInSeconds"))
            s3 = self.cloud.client("s3", region, job["RoleArn"])
            for channel in job.get("InputDataConfig", []):
                download_s3_prefix(s3, channel["DataSource"]["S3DataSource"]["S3Uri"],
                                   sandbox.path(f"{CONTAINER_BASE}/input/data/{channel['ChannelName']}"), control)
            resource_config = self._write_training_config(job, sandbox)
            for folder in ("model", "output/data", "output/intermediate"):
                sandbox.path(f"{CONTAINER_BASE}/{folder}").mkdir(parents=True, exist_ok=True)
            self._advance_training(name, "Training", "Training image download completed. Training in progress.")
            credentials = self.cloud.container_credentials(job["RoleArn"])
            environment = {**container_environment(self.cloud.url, region, sandbox, credentials),
                           **training_environment(job, sandbox, resource_config), **job.get("Environment", {})}
            metrics = MetricCollector(job["AlgorithmSpecification"].get("MetricDefinitions", []),
                                      algorithm_metrics=True)
            with self._log(TRAINING, name, region, job["RoleArn"]) as log_stream:
                def on_line(line: str) -> None:
                    log_stream.write(line)
                    metrics.feed(line)

                outcome = run_process(command, environment, sandbox.root, control, on_line)
            if final_metrics := metrics.final_metrics():
                self._update(TRAINING, name, lambda body: body.update(FinalMetricDataList=final_metrics))
            reason = control.stop_reason()
            if reason is StopReason.SHUTDOWN:
                return
            if reason is None:
                if outcome.exit_code != 0:
                    raise JobFailure(failure_reason(sandbox, outcome))
                self._advance_training(name, "Uploading", "Uploading generated training model")
            # A stopped job's model is uploaded too: SageMaker lets algorithms save it on SIGTERM.
            self._upload_training_outputs(job, sandbox, s3)

    def _advance_training(self, name: str, secondary: str, message: str, **fields: Any) -> None:
        def change(job: Resource) -> None:
            job.update(fields)
            if job["TrainingJobStatus"] == "InProgress":  # a Stopping job stays so
                add_transition(job, secondary, message, now())

        self._update(TRAINING, name, change)

    @staticmethod
    def _write_training_config(job: Resource, sandbox: Sandbox) -> Resource:
        """input/config/*.json of the training container contract; returns the resource config."""
        instance_type = job["ResourceConfig"]["InstanceType"]
        resource_config = {
            "current_host": HOST_NAME,
            "current_instance_type": instance_type,
            "current_group_name": "homogeneousCluster",
            "hosts": [HOST_NAME],
            "instance_groups": [{"instance_group_name": "homogeneousCluster", "instance_type": instance_type,
                                 "hosts": [HOST_NAME]}],
            "network_interface_name": "eth0",
        }
        input_data_config = {}
        for channel in job.get("InputDataConfig", []):
            settings = {
                "TrainingInputMode": channel.get("InputMode") or job["AlgorithmSpecification"]["TrainingInputMode"],
                "S3DistributionType": channel["DataSource"]["S3DataSource"].get("S3DataDistributionType",
                                                                                "FullyReplicated"),
                "RecordWrapperType": channel.get("RecordWrapperType", "None"),
            }
            for optional in ("ContentType", "CompressionType"):
                if optional in channel:
                    settings[optional] = channel[optional]
            input_data_config[channel["ChannelName"]] = settings
        sandbox.write_json(f"{CONTAINER_BASE}/input/config/hyperparameters.json", job.get("HyperParameters", {}))
        sandbox.write_json(f"{CONTAINER_BASE}/input/config/resourceconfig.json", resource_config)
        sandbox.write_json(f"{CONTAINER_BASE}/input/config/inputdataconfig.json", input_data_config)
        return resource_config

    def _upload_training_outputs(self, job: Resource, sandbox: Sandbox, s3: Any) -> None:
        """model.tar.gz (or the model folder, uncompressed) and output.tar.gz at
        <S3OutputPath>/<job name>/output/, as SageMaker lays them out."""
        name = job["TrainingJobName"]
        output = f"{job['OutputDataConfig']['S3OutputPath'].rstrip('/')}/{name}/output"
        model_dir = sandbox.path(f"{CONTAINER_BASE}/model")
        if job["OutputDataConfig"].get("CompressionType") == "NONE":
            artifacts = f"{output}/model/"
            upload_directory(s3, model_dir, artifacts)
        else:
            artifacts = f"{output}/model.tar.gz"
            archive = sandbox.root / "model.tar.gz"
            tar_directory(model_dir, archive)
            upload_file(s3, archive, artifacts)
        data_dir = sandbox.path(f"{CONTAINER_BASE}/output/data")
        if any(data_dir.iterdir()):
            archive = sandbox.root / "output.tar.gz"
            tar_directory(data_dir, archive)
            upload_file(s3, archive, f"{output}/output.tar.gz")
        self._update(TRAINING, name, lambda body: body.update(ModelArtifacts={"S3ModelArtifacts": artifacts}))
