"""The job code as SageMaker runs it: a processing job of the scikit-learn image, in the local cloud."""

from __future__ import annotations

import time

from tests.jobs.conftest import DATA_DIR, JOBS_DIR

IMAGE = "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-scikit-learn:1.2-1-cpu-py3"
BUCKET = "jobcode-processing-test"


def s3_input(name: str, uri: str, local_path: str) -> dict:
    return {
        "InputName": name,
        "S3Input": {"S3Uri": uri, "LocalPath": local_path, "S3DataType": "S3Prefix", "S3InputMode": "File"},
    }


def run_preprocess_job(sagemaker, name: str, raw_prefix: str) -> dict:
    """preprocess.py with its default directories, the code input being the whole include/jobs folder."""
    sagemaker.create_processing_job(
        ProcessingJobName=name,
        RoleArn="arn:aws:iam::123456789012:role/processing",
        AppSpecification={
            "ImageUri": IMAGE,
            "ContainerEntrypoint": ["python3", "/opt/ml/processing/input/code/preprocess.py"],
            "ContainerArguments": ["--dataset", "customers", "--event-time", "1700000000"],
        },
        ProcessingResources={
            "ClusterConfig": {"InstanceCount": 1, "InstanceType": "ml.m5.large", "VolumeSizeInGB": 5}
        },
        ProcessingInputs=[
            s3_input("code", f"s3://{BUCKET}/code/", "/opt/ml/processing/input/code"),
            s3_input("raw", f"s3://{BUCKET}/{raw_prefix}", "/opt/ml/processing/input/raw"),
        ],
        ProcessingOutputConfig={
            "Outputs": [
                {
                    "OutputName": "customers",
                    "S3Output": {
                        "S3Uri": f"s3://{BUCKET}/output/{name}/",
                        "LocalPath": "/opt/ml/processing/output",
                        "S3UploadMode": "EndOfJob",
                    },
                }
            ]
        },
        StoppingCondition={"MaxRuntimeInSeconds": 300},
    )
    deadline = time.monotonic() + 120
    while (job := sagemaker.describe_processing_job(ProcessingJobName=name))["ProcessingJobStatus"] in (
        "InProgress",
        "Stopping",
    ):
        assert time.monotonic() < deadline, "processing job did not finish"
        time.sleep(0.3)
    return job


def test_preprocess_runs_as_a_processing_job(aws):
    s3, sagemaker = aws("s3"), aws("sagemaker")
    s3.create_bucket(Bucket=BUCKET)
    for script in JOBS_DIR.glob("*.py"):
        s3.upload_file(str(script), BUCKET, f"code/{script.name}")
    raw = (DATA_DIR / "customers.csv").read_text().splitlines()
    s3.put_object(Bucket=BUCKET, Key="raw/customers.csv", Body="\n".join(raw[:21]) + "\n")
    bad_rows = [raw[0], raw[1], raw[2].replace(",Male,", ",Robot,")]
    s3.put_object(Bucket=BUCKET, Key="bad/customers.csv", Body="\n".join(bad_rows) + "\n")

    job = run_preprocess_job(sagemaker, "jobcode-preprocess-good", "raw/")
    assert job["ProcessingJobStatus"] == "Completed", job.get("FailureReason")
    body = (
        s3.get_object(Bucket=BUCKET, Key="output/jobcode-preprocess-good/customers.csv")["Body"]
        .read()
        .decode()
    )
    lines = body.splitlines()
    assert len(lines) == 21 and lines[0].startswith("policy_id,customer_age,")

    job = run_preprocess_job(sagemaker, "jobcode-preprocess-bad", "bad/")
    assert job["ProcessingJobStatus"] == "Failed"
    # A bad input is the job's ClientError, as SageMaker marks what a retry cannot fix.
    assert job["FailureReason"].startswith("ClientError: customers.csv: ")
    assert "customers.csv: column customer_gender has unknown values 'Robot' at row 2" in job["FailureReason"]
    assert job["ExitMessage"] == job["FailureReason"]
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix="output/jobcode-preprocess-bad/")
    assert listed.get("KeyCount") == 0
