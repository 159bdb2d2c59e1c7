"""SageMaker hyperparameter tuning jobs: Create/Describe/List/Stop and
ListTrainingJobsForHyperParameterTuningJob, run by a background thread that asks optuna for
hyperparameters (Bayesian: seeded TPE; Random: seeded random sampling) and runs each trial as a
real training job named "<tuning job>-<3 digit index>-<8 hex>". The thread itself takes no job
slot; its trials do, like any training job."""

from __future__ import annotations

import copy
import logging
import math
import secrets
import time
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from include.localcloud.protocol import AwsError, RequestContext, new_request_id, not_found
from include.localcloud.sagemaker.jobs import (
    ACTIVE_STATUSES,
    LOCAL_CLOUD_STOPPED,
    TERMINAL_STATUSES,
    TRAINING,
    check_training_request,
    modified_between,
    name_in_use,
)
from include.localcloud.sagemaker.models import (
    XGBOOST_IMAGE,
    Resource,
    image_repository,
    list_page,
    now,
    pick,
    region_of,
    sagemaker_arn,
)
from include.localcloud.sagemaker.sandbox import JobControl, JobRunner, StopReason
from include.localcloud.sagemaker.tags import save_tags

if TYPE_CHECKING:
    from botocore.model import ServiceModel

    from include.localcloud.server import LocalCloud

log = logging.getLogger(__name__)
optuna.logging.set_verbosity(optuna.logging.WARNING)

TUNING_JOB = "tuning-job"
LABEL = "hyperparameter tuning job"
POLL_SECONDS = 0.25
TRIAL_STOP_WAIT_SECONDS = 30.0  # a stopped trial ends within the sandbox's SIGTERM grace period
OBJECTIVE_METRIC_HYPERPARAMETER = "_tuning_objective_metric"  # SageMaker adds it for built-in algorithms


def invalid(message: str) -> AwsError:
    return AwsError("ValidationException", message)


@dataclass(frozen=True)
class TunedHyperparameter:
    """One hyperparameter range, as an optuna distribution."""

    name: str
    distribution: BaseDistribution
    reverse: bool = False  # ReverseLogarithmic: 1 - x is sampled on a log scale

    def value(self, sampled: Any) -> str:
        """The hyperparameter's value as SageMaker passes it: a string."""
        if self.reverse:
            return repr(1.0 - sampled)
        return repr(sampled) if isinstance(sampled, float) else str(sampled)


def search_space(ranges: dict[str, Any]) -> list[TunedHyperparameter]:
    """The hyperparameters a tuning job tunes, checked as SageMaker checks ParameterRanges."""
    space: list[TunedHyperparameter] = []
    for kind in ("IntegerParameterRanges", "ContinuousParameterRanges"):
        for item in ranges.get(kind, []):
            name, scaling = item["Name"], item.get("ScalingType", "Auto")
            number = int if kind == "IntegerParameterRanges" else float
            try:
                low, high = number(item["MinValue"]), number(item["MaxValue"])
            except ValueError as exc:
                raise invalid(f"{kind}: {name}: MinValue and MaxValue must be {number.__name__} values.") from exc
            if not (math.isfinite(low) and math.isfinite(high)) or low > high:
                raise invalid(f"{kind}: {name}: MinValue {item['MinValue']} must not exceed MaxValue "
                              f"{item['MaxValue']}.")
            if scaling == "Logarithmic" and low <= 0:
                raise invalid(f"{kind}: {name}: Logarithmic scaling needs a MinValue greater than 0.")
            if scaling == "ReverseLogarithmic":
                if kind == "IntegerParameterRanges" or not 0 <= low < high < 1:
                    raise invalid(f"{kind}: {name}: ReverseLogarithmic scaling is for continuous ranges within "
                                  "[0, 1).")
                space.append(TunedHyperparameter(name, FloatDistribution(1 - high, 1 - low, log=True), reverse=True))
                continue
            distribution = IntDistribution if kind == "IntegerParameterRanges" else FloatDistribution
            space.append(TunedHyperparameter(name, distribution(low, high, log=scaling == "Logarithmic")))
    for item in ranges.get("CategoricalParameterRanges", []):
        space.append(TunedHyperparameter(item["Name"], CategoricalDistribution(item["Values"])))
    if ranges.get("AutoParameters"):
        raise invalid("AutoParameters are not supported by the local cloud; give explicit ranges.")
    names = [parameter.name for parameter in space]
    if not names:
        raise invalid("ParameterRanges must give at least one hyperparameter range.")
    if len(names) != len(set(names)):
        raise invalid(f"ParameterRanges: each hyperparameter may have one range only: {names}.")
    return space


def make_sampler(config: Resource, name: str, max_trials: int) -> optuna.samplers.BaseSampler:
    # Seeded so that a tuning job's suggestions can be reproduced: RandomSeed, else from its name.
    seed = config.get("RandomSeed", zlib.crc32(name.encode()))
    if config["Strategy"] == "Random":
        return optuna.samplers.RandomSampler(seed=seed)
    # TPE explores at random first; with SageMaker-sized budgets (tens of trials) a third of them.
    # The constant liar keeps parallel trials from being suggested the same point.
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(1, min(10, max_trials // 3)),
                                      constant_liar=True)


def objective_value(trial: Resource, metric_name: str) -> float | None:
    """A finished trial's objective metric; None while it runs or when it never reported one."""
    if trial["TrainingJobStatus"] not in ("Completed", "Stopped"):
        return None
    for metric in trial.get("FinalMetricDataList", []):
        if metric["MetricName"] == metric_name:
            return metric["Value"]
    return None


def trial_summary(trial: Resource, tuning: Resource) -> Resource:
    """A trial as ListTrainingJobsForHyperParameterTuningJob and BestTrainingJob show it."""
    objective = tuning["HyperParameterTuningJobConfig"]["HyperParameterTuningJobObjective"]
    tuned = {item["Name"] for ranges in tuning["HyperParameterTuningJobConfig"]["ParameterRanges"].values()
             for item in ranges}
    summary = pick(trial, "TrainingJobName", "TrainingJobArn", "CreationTime", "TrainingStartTime",
                   "TrainingEndTime", "TrainingJobStatus", "FailureReason")
    summary["TuningJobName"] = tuning["HyperParameterTuningJobName"]
    summary["TunedHyperParameters"] = {k: v for k, v in trial.get("HyperParameters", {}).items() if k in tuned}
    value = objective_value(trial, objective["MetricName"])
    if value is not None:
        summary["FinalHyperParameterTuningJobObjectiveMetric"] = {
            "Type": objective["Type"], "MetricName": objective["MetricName"], "Value": value}
        summary["ObjectiveStatus"] = "Succeeded"
    else:
        summary["ObjectiveStatus"] = "Pending" if trial["TrainingJobStatus"] in ACTIVE_STATUSES else "Failed"
    return summary


def progress(tuning: Resource, trials: list[Resource]) -> Resource:
    """The parts of a tuning job's description that follow from its trials."""
    summaries = [trial_summary(trial, tuning) for trial in trials]
    statuses = [summary["TrainingJobStatus"] for summary in summaries]
    objectives = [summary["ObjectiveStatus"] for summary in summaries]
    described: Resource = {
        "TrainingJobStatusCounters": {
            "Completed": statuses.count("Completed"),
            "InProgress": sum(statuses.count(status) for status in ACTIVE_STATUSES),
            "RetryableError": 0,
            "NonRetryableError": statuses.count("Failed"),
            "Stopped": statuses.count("Stopped"),
        },
        "ObjectiveStatusCounters": {status: objectives.count(status) for status in ("Succeeded", "Pending", "Failed")},
    }
    succeeded = [s for s in summaries if "FinalHyperParameterTuningJobObjectiveMetric" in s]
    if succeeded:
        maximize = tuning["HyperParameterTuningJobConfig"]["HyperParameterTuningJobObjective"]["Type"] == "Maximize"
        pick_best = max if maximize else min
        described["BestTrainingJob"] = pick_best(
            succeeded, key=lambda s: s["FinalHyperParameterTuningJobObjectiveMetric"]["Value"])
    return described


class TuningOperations:
    """CreateHyperParameterTuningJob and its Describe/List/Stop operations, on JobOperations'
    training jobs and job runner."""

    cloud: LocalCloud
    model: ServiceModel
    job_runner: JobRunner

    if TYPE_CHECKING:  # provided by JobOperations
        def start_training_job(self, params: dict[str, Any], ctx: RequestContext,
                               tuning_job_arn: str | None = None) -> str: ...

        def stop_training_job(self, params: dict[str, Any], ctx: RequestContext) -> dict[str, Any]: ...

    def create_hyper_parameter_tuning_job(self, params: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        name = params["HyperParameterTuningJobName"]
        tuning = self._tuning_description(params)
        created = now()
        tuning.update({
            "HyperParameterTuningJobArn": sagemaker_arn(ctx, "hyper-parameter-tuning-job", name),
            "HyperParameterTuningJobStatus": "InProgress",
            "CreationTime": created,
            "LastModifiedTime": created,
            **progress(tuning, []),
        })
        if not self.cloud.store.insert(TUNING_JOB, name, tuning):
            raise name_in_use(LABEL, self._tuning_job(name)["HyperParameterTuningJobArn"])
        save_tags(self.cloud.store, tuning["HyperParameterTuningJobArn"], params.get("Tags"))
        self.job_runner.start(TUNING_JOB, name, lambda control: self._run_tuning_job(name, control))
        return {"HyperParameterTuningJobArn": tuning["HyperParameterTuningJobArn"]}

    def describe_hyper_parameter_tuning_job(self, params: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        return self._tuning_job(params["HyperParameterTuningJobName"])

    def list_hyper_parameter_tuning_jobs(self, params: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        jobs = modified_between(self.cloud.store.list(TUNING_JOB), params)
        page, token = list_page(jobs, params, name_key="HyperParameterTuningJobName",
                                status_key="HyperParameterTuningJobStatus", default_sort="Name",
                                default_order="Ascending")
        summary_keys = self.model.shape_for("HyperParameterTuningJobSummary").members
        summaries = [{**pick(job, *summary_keys),
                      "Strategy": job["HyperParameterTuningJobConfig"]["Strategy"],
                      "ResourceLimits": job["HyperParameterTuningJobConfig"]["ResourceLimits"]} for job in page]
        result: dict[str, Any] = {"HyperParameterTuningJobSummaries": summaries}
        if token:
            result["NextToken"] = token
        return result

    def list_training_jobs_for_hyper_parameter_tuning_job(self, params: dict[str, Any],
                                                          ctx: RequestContext) -> dict[str, Any]:
        tuning = self._tuning_job(params["HyperParameterTuningJobName"])
        summaries = [trial_summary(trial, tuning) for trial in self._trials(tuning)]
        if params.get("SortBy") == "FinalObjectiveMetricValue":  # jobs without the metric are left out
            summaries = [s for s in summaries if "FinalHyperParameterTuningJobObjectiveMetric" in s]
        page, token = list_page(
            summaries, params, name_key="TrainingJobName", status_key="TrainingJobStatus", default_sort="Name",
            default_order="Ascending",
            sort_keys={"FinalObjectiveMetricValue": lambda s: s["FinalHyperParameterTuningJobObjectiveMetric"]["Value"]},
        )
        result: dict[str, Any] = {"TrainingJobSummaries": page}
        if token:
            result["NextToken"] = token
        return result

    def stop_hyper_parameter_tuning_job(self, params: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        name = params["HyperParameterTuningJobName"]

        def change(tuning: Resource) -> None:
            status = tuning["HyperParameterTuningJobStatus"]
            if status == "Stopping":
                return
            if status != "InProgress":
                raise invalid(f"The request was rejected because the {LABEL} is in status {status}.")
            tuning["HyperParameterTuningJobStatus"] = "Stopping"
            tuning["LastModifiedTime"] = now()

        if self.cloud.store.update(TUNING_JOB, name, change) is None:
            raise not_found()
        if not self.job_runner.stop(TUNING_JOB, name, StopReason.STOPPED):
            self._end_tuning_job(name, StopReason.STOPPED, None)  # its thread has just ended
        return {}

    # -- lifecycle of the local cloud (after start_jobs/stop_jobs, which end the trials) ----------
    def start_tuning(self) -> None:
        """After a crash, tuning jobs the store still shows running end Failed."""
        for tuning in self.cloud.store.list(TUNING_JOB):
            if tuning["HyperParameterTuningJobStatus"] in ACTIVE_STATUSES:
                self._end_tuning_job(tuning["HyperParameterTuningJobName"], StopReason.SHUTDOWN, None)

    def stop_tuning(self) -> None:
        """Tuning jobs whose thread did not end with the job runner's shutdown end Failed."""
        self.start_tuning()

    # -- internals ---------------------------------------------------------------------------------
    def _tuning_job(self, name: str) -> Resource:
        tuning = self.cloud.store.get(TUNING_JOB, name)
        if tuning is None:
            raise not_found()
        return tuning

    def _trials(self, tuning: Resource) -> list[Resource]:
        arn = tuning["HyperParameterTuningJobArn"]
        return [job for job in self.cloud.store.list(TRAINING.store_kind) if job.get("TuningJobArn") == arn]

    def _tuning_description(self, params: dict[str, Any]) -> Resource:
        """The stored description of a new tuning job, after the checks SageMaker makes and those
        of what the local cloud supports: one training job definition, Bayesian or Random."""
        if "TrainingJobDefinition" not in params or "TrainingJobDefinitions" in params:
            raise invalid("The local cloud runs tuning jobs with a single TrainingJobDefinition.")
        for unsupported in ("WarmStartConfig", "Autotune"):
            if unsupported in params:
                raise invalid(f"{unsupported} is not supported by the local cloud.")
        config = copy.deepcopy(params["HyperParameterTuningJobConfig"])
        definition = copy.deepcopy(params["TrainingJobDefinition"])
        if config["Strategy"] not in ("Bayesian", "Random"):
            raise invalid(f"Strategy {config['Strategy']} is not supported by the local cloud; use Bayesian or Random.")
        objective = config.setdefault("HyperParameterTuningJobObjective", definition.get("TuningObjective"))
        if not objective:
            raise invalid("HyperParameterTuningJobConfig.HyperParameterTuningJobObjective is required.")
        ranges = config.setdefault("ParameterRanges", definition.get("HyperParameterRanges") or {})
        limits = config["ResourceLimits"]
        if not limits.get("MaxNumberOfTrainingJobs"):
            raise invalid("ResourceLimits.MaxNumberOfTrainingJobs is required by the local cloud.")
        static = definition.setdefault("StaticHyperParameters", {})
        tuned = [parameter.name for parameter in search_space(ranges)]
        if both := sorted(set(tuned) & set(static)):
            raise invalid(f"Hyperparameters {both} are given both as static and as tuned hyperparameters.")
        spec = definition["AlgorithmSpecification"]
        built_in = image_repository(spec.get("TrainingImage") or "") == XGBOOST_IMAGE
        defined = {metric["Name"] for metric in spec.get("MetricDefinitions", [])}
        if not built_in and objective["MetricName"] not in defined:
            raise invalid(f"The objective metric {objective['MetricName']} is not among the training job "
                          f"definition's MetricDefinitions {sorted(defined)}.")
        if built_in:
            static.setdefault(OBJECTIVE_METRIC_HYPERPARAMETER, objective["MetricName"])
        check_training_request(self._trial_request(definition, "trial", {}))
        return {"HyperParameterTuningJobName": params["HyperParameterTuningJobName"],
                "HyperParameterTuningJobConfig": config, "TrainingJobDefinition": definition}

    def _trial_request(self, definition: Resource, name: str, tuned: dict[str, str]) -> dict[str, Any]:
        """The CreateTrainingJob request of one trial."""
        accepted = self.model.operation_model("CreateTrainingJob").input_shape.members
        request = {key: value for key, value in definition.items() if key in accepted}
        request["TrainingJobName"] = name
        request["HyperParameters"] = {**definition["StaticHyperParameters"], **tuned}
        return request

    def _run_tuning_job(self, name: str, control: JobControl) -> None:
        if self._tuning_job(name)["HyperParameterTuningJobStatus"] in TERMINAL_STATUSES:
            return  # stopped before its thread was known; the stop recorded its end
        failure = None
        try:
            self._tune(name, control)
        except Exception as exc:  # a bug of the local cloud: the tuning job must still end
            log.exception("%s %s failed unexpectedly", LABEL, name)
            failure = f"InternalServerError: {exc}"
        self._end_tuning_job(name, control.stop_reason(), failure)

    def _tune(self, name: str, control: JobControl) -> None:
        tuning = self._tuning_job(name)
        config, definition = tuning["HyperParameterTuningJobConfig"], tuning["TrainingJobDefinition"]
        arn = tuning["HyperParameterTuningJobArn"]
        ctx = RequestContext(self.cloud, region_of(arn), arn.split(":")[4], new_request_id())
        space = search_space(config["ParameterRanges"])
        limits = config["ResourceLimits"]
        max_trials, parallel = limits["MaxNumberOfTrainingJobs"], limits["MaxParallelTrainingJobs"]
        objective = config["HyperParameterTuningJobObjective"]
        study = optuna.create_study(
            direction="maximize" if objective["Type"] == "Maximize" else "minimize",
            sampler=make_sampler(config, name, max_trials))
        # Trials in the order they were asked; the first `told` of them are told to the study.
        # A trial's result is told, in trial order, just before the trial `parallel` places later
        # is asked: what the sampler knows at each ask, and so every suggestion, does not depend
        # on which of the parallel trials ended first. A slot whose trial ended out of order
        # waits for the older ones.
        asked: list[tuple[str, optuna.trial.Trial]] = []
        told = 0
        try:
            while True:
                ended = self.job_runner.ended_count()
                while told < len(asked) and (len(asked) - told == parallel or len(asked) == max_trials):
                    trial_name, trial = asked[told]
                    job = self.cloud.store.get(TRAINING.store_kind, trial_name)
                    if job is None or job["TrainingJobStatus"] not in TERMINAL_STATUSES:
                        break
                    value = objective_value(job, objective["MetricName"])
                    if value is None:
                        study.tell(trial, state=TrialState.FAIL)
                    else:
                        study.tell(trial, value)
                    told += 1
                self._record_progress(name)
                if control.stop_reason() is not None or told == max_trials:
                    return
                while len(asked) < max_trials and len(asked) - told < parallel and control.stop_reason() is None:
                    trial = study.ask({parameter.name: parameter.distribution for parameter in space})
                    trial_name = f"{name}-{len(asked) + 1:03d}-{secrets.token_hex(4)}"
                    tuned = {parameter.name: parameter.value(trial.params[parameter.name]) for parameter in space}
                    self.start_training_job(self._trial_request(definition, trial_name, tuned), ctx, arn)
                    asked.append((trial_name, trial))
                # Until a trial (or any job) ends; a stop is seen within POLL_SECONDS.
                self.job_runner.wait_for_an_end(ended, POLL_SECONDS)
        finally:  # stopped, or a bug: no trial outlives its tuning job
            self._stop_trials([trial_name for trial_name, _ in asked[told:]], ctx, control)

    def _stop_trials(self, names: list[str], ctx: RequestContext, control: JobControl) -> None:
        """Stop the trials still running and wait (a while) for them to end."""
        if control.stop_reason() is not StopReason.SHUTDOWN:  # on shutdown the job runner stops them
            for trial_name in names:
                try:
                    self.stop_training_job({"TrainingJobName": trial_name}, ctx)
                except AwsError:  # it ended meanwhile
                    pass
        deadline = time.monotonic() + TRIAL_STOP_WAIT_SECONDS
        while time.monotonic() < deadline and any(
            self.cloud.store.get(TRAINING.store_kind, n)["TrainingJobStatus"] in ACTIVE_STATUSES for n in names
        ):
            time.sleep(POLL_SECONDS)

    def _record_progress(self, name: str) -> None:
        tuning = self._tuning_job(name)
        described = progress(tuning, self._trials(tuning))
        if any(tuning.get(key) != value for key, value in described.items()):
            self.cloud.store.update(TUNING_JOB, name, lambda body: body.update(described))

    def _end_tuning_job(self, name: str, reason: StopReason | None, failure: str | None) -> None:
        """Record how a tuning job ended: a stop decides, then a failure, then whether any trial
        reported the objective metric."""
        tuning = self._tuning_job(name)
        described = progress(tuning, self._trials(tuning))
        ended = now()

        def change(body: Resource) -> None:
            if body["HyperParameterTuningJobStatus"] in TERMINAL_STATUSES:
                return
            body.update(described)
            reason_text = failure
            if reason is StopReason.SHUTDOWN:
                status, reason_text = "Failed", LOCAL_CLOUD_STOPPED
            elif reason is not None:
                status = "Stopped"
            elif failure is None and described["ObjectiveStatusCounters"]["Succeeded"] == 0:
                attempts = sum(described["TrainingJobStatusCounters"].values())
                status, reason_text = "Failed", (f"No training job succeeded after {attempts} attempts. Please "
                                                 "take a look at the training job failures to get more details.")
            else:
                status = "Failed" if failure else "Completed"
            body.update(HyperParameterTuningJobStatus=status, HyperParameterTuningEndTime=ended,
                        LastModifiedTime=ended)
            if status == "Failed":
                body["FailureReason"] = reason_text

        self.cloud.store.update(TUNING_JOB, name, change)
