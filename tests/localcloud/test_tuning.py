"""SageMaker hyperparameter tuning jobs in the local cloud: every trial a real training job."""

from __future__ import annotations

import io
import json
import math
import re
import tarfile
import time
from collections.abc import Callable
from typing import Any

import pytest
from botocore.exceptions import ClientError

from include.localcloud.sagemaker.jobs import JobOperations
from include.localcloud.server import LocalCloud
from tests.conftest import make_client
from tests.localcloud.test_jobs import (
    LOCAL_CLOUD_STOPPED,
    RESOURCES,
    ROLE,
    XGBOOST_IMAGE,
    channels,
    upload_training_data,
    wait_for,
    wait_until_done,
)

BUCKET = "tuning-tests"
RANGES = {
    "IntegerParameterRanges": [{"Name": "max_depth", "MinValue": "1", "MaxValue": "6", "ScalingType": "Auto"}],
    "ContinuousParameterRanges": [
        {"Name": "eta", "MinValue": "0.01", "MaxValue": "0.5", "ScalingType": "Logarithmic"},
        {"Name": "subsample", "MinValue": "0.5", "MaxValue": "1", "ScalingType": "Linear"},
    ],
    "CategoricalParameterRanges": [{"Name": "grow_policy", "Values": ["depthwise", "lossguide"]}],
}


def tuning_job(name: str, strategy: str, trials: int, parallel: int, ranges: dict[str, Any] = RANGES,
               static: dict[str, str] | None = None, **config: Any) -> dict[str, Any]:
    return {
        "HyperParameterTuningJobName": name,
        "HyperParameterTuningJobConfig": {
            "Strategy": strategy,
            "HyperParameterTuningJobObjective": {"Type": "Maximize", "MetricName": "validation:auc"},
            "ResourceLimits": {"MaxNumberOfTrainingJobs": trials, "MaxParallelTrainingJobs": parallel},
            "ParameterRanges": ranges,
            **config,
        },
        "TrainingJobDefinition": {
            "StaticHyperParameters": static or {"num_round": "8", "objective": "binary:logistic"},
            "AlgorithmSpecification": {"TrainingImage": XGBOOST_IMAGE, "TrainingInputMode": "File"},
            "RoleArn": ROLE,
            "InputDataConfig": channels(BUCKET),
            "OutputDataConfig": {"S3OutputPath": f"s3://{BUCKET}/tuning"},
            "ResourceConfig": RESOURCES,
            "StoppingCondition": {"MaxRuntimeInSeconds": 600},
        },
    }


@pytest.fixture(scope="module")
def sm(aws: Callable[..., Any]) -> Any:
    upload_training_data(aws("s3"), BUCKET)
    return aws("sagemaker")


def describe_tuning(sm: Any, name: str) -> dict[str, Any]:
    return wait_until_done(sm.describe_hyper_parameter_tuning_job, "HyperParameterTuningJobStatus",
                           HyperParameterTuningJobName=name)


def trials_of(sm: Any, name: str, **params: Any) -> list[dict[str, Any]]:
    return sm.list_training_jobs_for_hyper_parameter_tuning_job(HyperParameterTuningJobName=name,
                                                                **params)["TrainingJobSummaries"]


def test_bayesian_tuning_runs_real_trials_over_the_three_range_kinds(sm: Any) -> None:
    arn = sm.create_hyper_parameter_tuning_job(**tuning_job("bayes-fraud", "Bayesian", trials=5, parallel=2))[
        "HyperParameterTuningJobArn"]
    tuning = describe_tuning(sm, "bayes-fraud")

    assert arn == "arn:aws:sagemaker:us-east-1:123456789012:hyper-parameter-tuning-job/bayes-fraud"
    assert tuning["HyperParameterTuningJobStatus"] == "Completed"
    assert tuning["TrainingJobStatusCounters"] == {"Completed": 5, "InProgress": 0, "RetryableError": 0,
                                                   "NonRetryableError": 0, "Stopped": 0}
    assert tuning["ObjectiveStatusCounters"] == {"Succeeded": 5, "Pending": 0, "Failed": 0}
    assert tuning["CreationTime"] < tuning["HyperParameterTuningEndTime"]
    static = tuning["TrainingJobDefinition"]["StaticHyperParameters"]
    assert static["_tuning_objective_metric"] == "validation:auc"  # SageMaker adds it for built-in algorithms

    trials = trials_of(sm, "bayes-fraud")
    assert [t["TrainingJobName"] for t in trials] == sorted(t["TrainingJobName"] for t in trials)  # by Name
    assert [t["TrainingJobName"][:15] for t in trials] == [f"bayes-fraud-{i:03d}" for i in range(1, 6)]
    assert all(re.fullmatch(r"bayes-fraud-\d{3}-[0-9a-f]{8}", t["TrainingJobName"]) for t in trials)
    for trial in trials:
        tuned = trial["TunedHyperParameters"]
        assert set(tuned) == {"max_depth", "eta", "subsample", "grow_policy"}
        assert 1 <= int(tuned["max_depth"]) <= 6
        assert 0.01 <= float(tuned["eta"]) <= 0.5 and 0.5 <= float(tuned["subsample"]) <= 1
        assert tuned["grow_policy"] in ("depthwise", "lossguide")
        assert trial["ObjectiveStatus"] == "Succeeded"
        job = sm.describe_training_job(TrainingJobName=trial["TrainingJobName"])
        assert job["TuningJobArn"] == arn
        assert job["HyperParameters"] == {**static, **tuned}
        auc = {m["MetricName"]: m["Value"] for m in job["FinalMetricDataList"]}["validation:auc"]
        assert trial["FinalHyperParameterTuningJobObjectiveMetric"] == {
            "Type": "Maximize", "MetricName": "validation:auc", "Value": auc}

    ranked = trials_of(sm, "bayes-fraud", SortBy="FinalObjectiveMetricValue", SortOrder="Descending")
    values = [t["FinalHyperParameterTuningJobObjectiveMetric"]["Value"] for t in ranked]
    assert values == sorted(values, reverse=True)
    assert tuning["BestTrainingJob"]["TrainingJobName"] == ranked[0]["TrainingJobName"]
    assert tuning["BestTrainingJob"]["FinalHyperParameterTuningJobObjectiveMetric"]["Value"] == max(values)
    summaries = sm.list_hyper_parameter_tuning_jobs(NameContains="bayes-fraud")["HyperParameterTuningJobSummaries"]
    assert [(s["HyperParameterTuningJobName"], s["Strategy"], s["HyperParameterTuningJobStatus"])
            for s in summaries] == [("bayes-fraud", "Bayesian", "Completed")]


def best_model(sm: Any, s3: Any, tuning: dict[str, Any]) -> bytes:
    """The xgboost-model file of a tuning job's best training job."""
    job = sm.describe_training_job(TrainingJobName=tuning["BestTrainingJob"]["TrainingJobName"])
    bucket, key = job["ModelArtifacts"]["S3ModelArtifacts"].removeprefix("s3://").split("/", 1)
    with tarfile.open(fileobj=io.BytesIO(s3.get_object(Bucket=bucket, Key=key)["Body"].read())) as archive:
        return archive.extractfile("xgboost-model").read()


def test_the_same_random_seed_gives_the_same_trials_whichever_trial_ends_first(
        sm: Any, aws: Callable[..., Any], monkeypatch: pytest.MonkeyPatch) -> None:
    # Parallel trials end in a different order in each run: odd-numbered trials start late in the
    # first, even-numbered ones in the second. The Bayesian search must not notice.
    started_late = {"seeded-a": 1, "seeded-b": 0, "seeded-c": 1}
    run_training_job = JobOperations._run_training_job

    def run_late_or_not(self: JobOperations, name: str, control: Any) -> None:
        tuning, index = name.rsplit("-", 2)[:2]
        if int(index) % 2 == started_late.get(tuning, -1):
            time.sleep(1.0)
        run_training_job(self, name, control)

    monkeypatch.setattr(JobOperations, "_run_training_job", run_late_or_not)
    for name, seed in (("seeded-a", 7), ("seeded-b", 7), ("seeded-c", 8)):
        sm.create_hyper_parameter_tuning_job(**tuning_job(name, "Bayesian", trials=5, parallel=2, RandomSeed=seed))
    runs = {name: describe_tuning(sm, name) for name in started_late}
    trials = {name: [(t["TunedHyperParameters"], t["FinalHyperParameterTuningJobObjectiveMetric"]["Value"])
                     for t in trials_of(sm, name)] for name in started_late}

    assert {run["HyperParameterTuningJobStatus"] for run in runs.values()} == {"Completed"}
    assert trials["seeded-a"] == trials["seeded-b"]  # the same hyperparameters and validation:auc, trial by trial
    assert runs["seeded-a"]["BestTrainingJob"]["TunedHyperParameters"] == runs["seeded-b"]["BestTrainingJob"][
        "TunedHyperParameters"]
    s3 = aws("s3")
    assert best_model(sm, s3, runs["seeded-a"]) == best_model(sm, s3, runs["seeded-b"])  # so the same test AUC
    assert [hp for hp, _ in trials["seeded-c"]] != [hp for hp, _ in trials["seeded-a"]]  # another seed: other trials


def test_random_tuning_counts_failed_trials_without_failing(sm: Any) -> None:
    # A tree_method the algorithm rejects makes some trials fail with a ClientError.
    ranges = {"IntegerParameterRanges": [{"Name": "max_depth", "MinValue": "2", "MaxValue": "4"}],
              "ContinuousParameterRanges": [{"Name": "colsample_bytree", "MinValue": "0.6", "MaxValue": "0.95",
                                             "ScalingType": "ReverseLogarithmic"}],
              "CategoricalParameterRanges": [{"Name": "tree_method", "Values": ["hist", "sideways"]}]}
    sm.create_hyper_parameter_tuning_job(**tuning_job("random-fraud", "Random", trials=4, parallel=2, ranges=ranges,
                                                      RandomSeed=3))
    tuning = describe_tuning(sm, "random-fraud")
    trials = trials_of(sm, "random-fraud")

    failed = [t for t in trials if t["TunedHyperParameters"]["tree_method"] == "sideways"]
    assert 0 < len(failed) < 4  # both outcomes occur with this seed
    assert tuning["HyperParameterTuningJobStatus"] == "Completed"
    assert tuning["TrainingJobStatusCounters"]["NonRetryableError"] == len(failed)
    assert tuning["TrainingJobStatusCounters"]["Completed"] == 4 - len(failed)
    assert tuning["ObjectiveStatusCounters"] == {"Succeeded": 4 - len(failed), "Pending": 0, "Failed": len(failed)}
    for trial in failed:
        assert (trial["TrainingJobStatus"], trial["ObjectiveStatus"]) == ("Failed", "Failed")
        assert trial["FailureReason"].startswith("ClientError: Hyperparameter tree_method: sideways is not in")
    assert all(0.6 <= float(t["TunedHyperParameters"]["colsample_bytree"]) <= 0.95 for t in trials)
    assert tuning["BestTrainingJob"]["TunedHyperParameters"]["tree_method"] == "hist"
    assert [t["TrainingJobName"] for t in trials_of(sm, "random-fraud", StatusEquals="Failed")] == [
        t["TrainingJobName"] for t in failed]


def test_a_tuning_job_without_any_successful_trial_fails(sm: Any) -> None:
    ranges = {"CategoricalParameterRanges": [{"Name": "booster", "Values": ["gbtree"]}]}
    sm.create_hyper_parameter_tuning_job(**tuning_job("hopeless", "Random", trials=2, parallel=2, ranges=ranges,
                                                      static={"num_round": "2", "objective": "reg:squarederror"}))
    tuning = describe_tuning(sm, "hopeless")  # auc does not apply to a regression
    assert tuning["HyperParameterTuningJobStatus"] == "Failed"
    assert tuning["FailureReason"].startswith("No training job succeeded after 2 attempts.")
    assert tuning["TrainingJobStatusCounters"]["NonRetryableError"] == 2
    assert "BestTrainingJob" not in tuning


def test_stopping_a_tuning_job_stops_its_trials(sm: Any) -> None:
    endless = {"num_round": "100000000", "objective": "binary:logistic"}
    sm.create_hyper_parameter_tuning_job(**tuning_job("stopped-tuning", "Bayesian", trials=6, parallel=2,
                                                      static=endless))
    wait_for(lambda: any(sm.describe_training_job(TrainingJobName=t["TrainingJobName"])["SecondaryStatus"]
                         == "Training" for t in trials_of(sm, "stopped-tuning")))
    sm.stop_hyper_parameter_tuning_job(HyperParameterTuningJobName="stopped-tuning")
    tuning = describe_tuning(sm, "stopped-tuning")

    assert tuning["HyperParameterTuningJobStatus"] == "Stopped"
    trials = trials_of(sm, "stopped-tuning")
    assert len(trials) == 2 and {t["TrainingJobStatus"] for t in trials} == {"Stopped"}
    assert tuning["TrainingJobStatusCounters"]["Stopped"] == 2
    with pytest.raises(ClientError) as caught:
        sm.stop_hyper_parameter_tuning_job(HyperParameterTuningJobName="stopped-tuning")
    assert caught.value.response["Error"]["Code"] == "ValidationException"


def test_a_running_tuning_job_ends_failed_when_the_cloud_stops(tmp_path: Any) -> None:
    endless = {"num_round": "100000000", "objective": "binary:logistic"}
    with LocalCloud(tmp_path, port=0) as cloud:
        upload_training_data(make_client(cloud, "s3"), BUCKET)
        sm = make_client(cloud, "sagemaker")
        sm.create_hyper_parameter_tuning_job(**tuning_job("cut-short-tuning", "Bayesian", trials=4, parallel=2,
                                                          static=endless))
        wait_for(lambda: len(trials_of(sm, "cut-short-tuning")) == 2)

    with LocalCloud(tmp_path, port=0) as cloud:
        sm = make_client(cloud, "sagemaker")
        tuning = sm.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName="cut-short-tuning")
        trials = trials_of(sm, "cut-short-tuning")
    assert (tuning["HyperParameterTuningJobStatus"], tuning["FailureReason"]) == ("Failed", LOCAL_CLOUD_STOPPED)
    assert [(t["TrainingJobStatus"], t["FailureReason"]) for t in trials] == [("Failed", LOCAL_CLOUD_STOPPED)] * 2
    assert tuning["TrainingJobStatusCounters"]["NonRetryableError"] == 2
    assert tuning["ObjectiveStatusCounters"] == {"Succeeded": 0, "Pending": 0, "Failed": 2}


@pytest.mark.parametrize(("change", "message"), [
    (lambda r: r["HyperParameterTuningJobConfig"].update(Strategy="Grid"), "Strategy Grid is not supported"),
    (lambda r: r["HyperParameterTuningJobConfig"]["ParameterRanges"]["ContinuousParameterRanges"][0].update(
        MinValue="0"), "Logarithmic scaling needs a MinValue greater than 0"),
    (lambda r: r["HyperParameterTuningJobConfig"]["ParameterRanges"]["IntegerParameterRanges"][0].update(
        MinValue="9"), "must not exceed MaxValue"),
    (lambda r: r["TrainingJobDefinition"]["StaticHyperParameters"].update(eta="0.1"),
     "given both as static and as tuned"),
    (lambda r: r["HyperParameterTuningJobConfig"].update(ParameterRanges={}), "at least one hyperparameter range"),
])
def test_tuning_requests_are_checked(sm: Any, change: Callable[[dict[str, Any]], None], message: str) -> None:
    request = json.loads(json.dumps(tuning_job("checked", "Bayesian", trials=2, parallel=1)))
    change(request)
    with pytest.raises(ClientError) as caught:
        sm.create_hyper_parameter_tuning_job(**request)
    assert caught.value.response["Error"]["Code"] == "ValidationException"
    assert message in caught.value.response["Error"]["Message"]
    with pytest.raises(ClientError) as missing:
        sm.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName="checked")
    assert missing.value.response["Error"]["Message"] == "Requested resource not found."


def test_provider_tuning_operator_runs_unchanged(sm: Any, airflow_connection: None) -> None:
    from airflow.providers.amazon.aws.operators.sagemaker import SageMakerTuningOperator

    tune = SageMakerTuningOperator(task_id="tune", check_interval=1,
                                   config=tuning_job("operator-tuning", "Bayesian", trials=2, parallel=2))
    result = tune.execute({})["Tuning"]
    assert result["HyperParameterTuningJobStatus"] == "Completed"
    assert result["ObjectiveStatusCounters"]["Succeeded"] == 2
    assert math.isfinite(result["BestTrainingJob"]["FinalHyperParameterTuningJobObjectiveMetric"]["Value"])
    with pytest.raises(ClientError) as taken:
        sm.create_hyper_parameter_tuning_job(**tuning_job("operator-tuning", "Random", trials=1, parallel=1))
    assert taken.value.response["Error"]["Code"] == "ResourceInUse"
