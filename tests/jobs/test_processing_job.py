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


def run_preprocess_job(sagemaker, name: str, raw_prefix: str, dataset: str = "customers",
                       customers_prefix: str | None = None, parts: int = 1) -> dict:
    """preprocess.py with its default directories, the code input being the whole include/jobs folder;
    with `customers_prefix`, the claims' check against the raw customers."""
    inputs = [
        s3_input("code", f"s3://{BUCKET}/code/", "/opt/ml/processing/input/code"),
        s3_input("raw", f"s3://{BUCKET}/{raw_prefix}", "/opt/ml/processing/input/raw"),
    ]
    arguments = ["--dataset", dataset, "--event-time", "1700000000", "--parts", str(parts)]
    if customers_prefix is not None:
        inputs.append(s3_input("customers", f"s3://{BUCKET}/{customers_prefix}", "/opt/ml/processing/input/customers"))
        arguments += ["--customers-dir", "/opt/ml/processing/input/customers"]
    sagemaker.create_processing_job(
        ProcessingJobName=name,
        RoleArn="arn:aws:iam::123456789012:role/processing",
        AppSpecification={
            "ImageUri": IMAGE,
            "ContainerEntrypoint": ["python3", "/opt/ml/processing/input/code/preprocess.py"],
            "ContainerArguments": arguments,
        },
        ProcessingResources={
            "ClusterConfig": {"InstanceCount": 1, "InstanceType": "ml.m5.large", "VolumeSizeInGB": 5}
        },
        ProcessingInputs=inputs,
        ProcessingOutputConfig={
            "Outputs": [
                {
                    "OutputName": dataset,
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

    job = run_preprocess_job(sagemaker, "jobcode-preprocess-good", "raw/", parts=2)
    assert job["ProcessingJobStatus"] == "Completed", job.get("FailureReason")
    prefix = "output/jobcode-preprocess-good/"
    keys = [item["Key"] for item in s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix)["Contents"]]
    assert keys == [f"{prefix}customers-part-00000.csv", f"{prefix}customers-part-00001.csv"]
    for key in keys:  # the 20 rows dealt in turn
        lines = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read().decode().splitlines()
        assert len(lines) == 11 and lines[0].startswith("policy_id,customer_age,")

    job = run_preprocess_job(sagemaker, "jobcode-preprocess-bad", "bad/")
    assert job["ProcessingJobStatus"] == "Failed"
    # A bad input is the job's ClientError, as SageMaker marks what a retry cannot fix.
    assert job["FailureReason"].startswith("ClientError: customers.csv: ")
    assert "customers.csv: column customer_gender has unknown values 'Robot' at row 2" in job["FailureReason"]
    assert job["ExitMessage"] == job["FailureReason"]
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix="output/jobcode-preprocess-bad/")
    assert listed.get("KeyCount") == 0


def test_failure_reasons_lead_with_the_file(aws):
    """Claims without customers fail the claims' data prep, naming the file and the policies; a
    long list of problems still fits FailureReason with its start."""
    s3, sagemaker = aws("s3"), aws("sagemaker")
    s3.create_bucket(Bucket=BUCKET)
    for script in JOBS_DIR.glob("*.py"):
        s3.upload_file(str(script), BUCKET, f"code/{script.name}")
    claims = (DATA_DIR / "claims.csv").read_text().splitlines()
    customers = (DATA_DIR / "customers.csv").read_text().splitlines()
    s3.put_object(Bucket=BUCKET, Key="orphans/claims.csv", Body="\n".join(claims[:11]) + "\n")
    s3.put_object(Bucket=BUCKET, Key="few-customers/customers.csv", Body="\n".join(customers[:9]) + "\n")
    job = run_preprocess_job(sagemaker, "jobcode-orphan-claims", "orphans/", "claims", "few-customers/")
    assert job["ProcessingJobStatus"] == "Failed"
    assert job["FailureReason"] == (  # claims of policies 1-10, customers of policies 1-8
        "ClientError: claims.csv: column policy_id has 2 policies without a customer in customers.csv: "
        "9, 10 at rows 9, 10")
    blank_columns = ",".join("" for _ in claims[0].split(","))
    wrong = [claims[0], *(",".join("x" for _ in claims[0].split(",")) for _ in range(30)), *[blank_columns] * 20]
    s3.put_object(Bucket=BUCKET, Key="long/claims.csv", Body="\n".join(wrong) + "\n")
    job = run_preprocess_job(sagemaker, "jobcode-long-reason", "long/", "claims")
    assert job["FailureReason"].startswith("ClientError: claims.csv: 20 blank rows (31–50); column ")
    assert len(job["FailureReason"]) <= 1024
