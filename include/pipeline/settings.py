"""The one settings object of the fraud pipeline: where it runs and with what, from environment
variables with defaults that work against the local cloud. Which cloud answers is NOT decided
here: that is the Airflow AWS connection's job (aws_default, with endpoint_url for the local cloud).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from include.pipeline.images import image_uri

REPO_ROOT = Path(__file__).resolve().parents[2]
JOBS_DIR = REPO_ROOT / "include" / "jobs"
DATA_DIR = REPO_ROOT / "data"

# The local cloud's account (moto's default); a real deployment sets FRAUD_EXECUTION_ROLE_ARN.
DEFAULT_ROLE_ARN = "arn:aws:iam::123456789012:role/SageMakerExecutionRole"
SKLEARN_VERSION = "1.2-1"
XGBOOST_VERSION = "1.7-1"
IMAGE_VERSIONS = {"sklearn": SKLEARN_VERSION, "xgboost": XGBOOST_VERSION, "clarify": None}


def _env_flag(environ: Mapping[str, str], name: str, default: bool) -> bool:
    value = environ.get(name)
    if value is None or value == "":
        return default
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"environment variable {name} must be true or false, got {value!r}")


def _env_int(environ: Mapping[str, str], name: str, default: int) -> int:
    value = environ.get(name) or str(default)
    try:
        return int(value)
    except ValueError as exc:
        raise ValueError(f"environment variable {name} must be an integer, got {value!r}") from exc


def _env_seconds(environ: Mapping[str, str], name: str, default: float) -> float:
    value = environ.get(name) or str(default)
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not seconds > 0 or math.isinf(seconds):
        raise ValueError(f"environment variable {name} must be a number of seconds above 0, got {value!r}")
    return seconds


@dataclass(frozen=True)
class Settings:
    region: str = "us-east-1"
    bucket: str = "sagemaker-fraud-detection"
    role_arn: str = DEFAULT_ROLE_ARN
    prefix: str = "fraud-detection"
    # Cron expression of the scheduled runs; None: runs start only on demand and on raw-data updates.
    schedule: str | None = None
    claims_file: str = str(DATA_DIR / "claims.csv")
    customers_file: str = str(DATA_DIR / "customers.csv")
    upload_raw_data: bool = True
    jobs_dir: str = str(JOBS_DIR)
    processing_instance_type: str = "ml.m5.xlarge"
    training_instance_type: str = "ml.m5.xlarge"
    endpoint_instance_type: str = "ml.m5.large"
    endpoint_name: str = "fraud-detection"
    athena_workgroup: str = "primary"
    # Seconds between status checks of jobs, endpoints and queries (fractions too).
    check_interval: float = 2
    # Tail training jobs' CloudWatch logs into the task log. The provider then checks the job's
    # status only every 30 s, which a local run notices.
    print_job_logs: bool = True
    # Wait for jobs and endpoints in the triggerer (deferrable operators) instead of a worker slot.
    # The dev stacks (make up, docker compose) turn it on; make run (airflow dags test) runs the
    # triggers inline when it is on.
    deferrable: bool = False
    task_retries: int = 2
    retry_delay_seconds: int = 30
    ingest_workers: int = 8
    tags: dict[str, str] = field(default_factory=lambda: {"project": "fraud-detection"})

    @property
    def retry_args(self) -> dict[str, Any]:
        """The DAGs' default_args for retries."""
        return {"retries": self.task_retries, "retry_delay": timedelta(seconds=self.retry_delay_seconds)}

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Settings:
        defaults = cls()
        return cls(
            region=environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION") or defaults.region,
            bucket=environ.get("FRAUD_BUCKET") or defaults.bucket,
            role_arn=environ.get("FRAUD_EXECUTION_ROLE_ARN") or defaults.role_arn,
            prefix=environ.get("FRAUD_PREFIX") or defaults.prefix,
            schedule=environ.get("FRAUD_DETECTION_SCHEDULE") or None,
            claims_file=environ.get("FRAUD_CLAIMS_FILE") or defaults.claims_file,
            customers_file=environ.get("FRAUD_CUSTOMERS_FILE") or defaults.customers_file,
            upload_raw_data=_env_flag(environ, "FRAUD_UPLOAD_RAW_DATA", defaults.upload_raw_data),
            processing_instance_type=environ.get("FRAUD_PROCESSING_INSTANCE_TYPE")
            or defaults.processing_instance_type,
            training_instance_type=environ.get("FRAUD_TRAINING_INSTANCE_TYPE")
            or defaults.training_instance_type,
            endpoint_instance_type=environ.get("FRAUD_ENDPOINT_INSTANCE_TYPE")
            or defaults.endpoint_instance_type,
            endpoint_name=environ.get("FRAUD_ENDPOINT_NAME") or defaults.endpoint_name,
            athena_workgroup=environ.get("FRAUD_ATHENA_WORKGROUP") or defaults.athena_workgroup,
            check_interval=_env_seconds(environ, "FRAUD_CHECK_INTERVAL", defaults.check_interval),
            print_job_logs=_env_flag(environ, "FRAUD_PRINT_JOB_LOGS", defaults.print_job_logs),
            deferrable=_env_flag(environ, "FRAUD_DEFERRABLE", defaults.deferrable),
            task_retries=_env_int(environ, "FRAUD_TASK_RETRIES", defaults.task_retries),
            retry_delay_seconds=_env_int(environ, "FRAUD_RETRY_DELAY_SECONDS", defaults.retry_delay_seconds),
            ingest_workers=_env_int(environ, "FRAUD_INGEST_WORKERS", defaults.ingest_workers),
        )

    def image_uri(self, framework: str) -> str:
        """The URI of a SageMaker image ("sklearn", "xgboost" or "clarify") in this region, from
        the SageMaker SDK's tables (include/pipeline/images.py). The DAGs call it when a task
        runs, as the `sagemaker_image` macro."""
        return image_uri(framework, self.region, IMAGE_VERSIONS[framework])

    def raw_data_uri(self, dataset: str, prefix: str | None = None) -> str:
        """Where the raw CSV of "claims" or "customers" lives in S3: the raw-data asset."""
        return f"s3://{self.bucket}/{prefix or self.prefix}/raw/{dataset}.csv"

