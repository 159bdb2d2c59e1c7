"""fraud_detection: the SageMaker lifecycle of the auto-insurance claim fraud model.

Data prep -> Feature Store -> dataset (Athena + split) -> bias before training -> train and tune
-> evaluate -> model -> bias after training -> registry -> deploy, with SageMaker lineage
recorded as the run goes. Wiring, params and schedule only: request configs come from
include/pipeline, the job code from include/jobs, custom operators from plugins/. The Airflow
AWS connection (aws_default) alone decides which cloud runs it.
"""

from __future__ import annotations

from typing import Any

from airflow.providers.amazon.aws.operators.athena import AthenaOperator
from airflow.providers.amazon.aws.operators.s3 import S3CreateBucketOperator, S3CreateObjectOperator
from airflow.providers.amazon.aws.operators.sagemaker import SageMakerModelOperator
from airflow.providers.amazon.aws.transfers.local_to_s3 import LocalFilesystemToS3Operator
from airflow.sdk import (
    DAG,
    Asset,
    AssetOrTimeSchedule,
    CronTriggerTimetable,
    Param,
    TriggerRule,
    task,
    task_group,
)
from fraud_operators.deployment import deploy_to_endpoint
from fraud_operators.feature_store import (
    FeatureStoreOfflineStoreSensor,
    SageMakerCreateFeatureGroupOperator,
)
from fraud_operators.lineage import SageMakerLineageOperator
from fraud_operators.registry import RegisterModelVersionOperator
from fraud_operators.retries import DeterministicFailuresFailAtOnce
from fraud_operators.s3 import LocalFolderToS3Operator, read_s3_json
from fraud_operators.training import SageMakerBestTrainingJobOperator
from fraud_operators.waits import (
    SageMakerProcessingOperator,
    SageMakerTrainingOperator,
    SageMakerTuningOperator,
)

from include.pipeline import clarify, configs, decisions, sql
from include.pipeline.configs import RunLayout, resource_name
from include.pipeline.settings import Settings
from include.pipeline.templating import ATTEMPT, PREFIX, RUN_EPOCH, RUN_TOKEN, param, pulled, sagemaker_image

SETTINGS = Settings.from_env()
LAYOUT = RunLayout.of(SETTINGS, PREFIX, RUN_TOKEN)
DATASETS = ("claims", "customers")
RAW_DATA = {dataset: Asset(name=f"fraud-raw-{dataset}", uri=SETTINGS.raw_data_uri(dataset)) for dataset in DATASETS}
JOB_WAIT = {
    "wait_for_completion": True, "check_interval": SETTINGS.check_interval, "deferrable": SETTINGS.deferrable
}
# Tasks whose results later groups read (group.task ids).
SELECTED_MODEL = "train.select_model"
BASELINE_TRAINING = "train.train_baseline"
CREATED_MODEL = "model.create_model"
APPROVAL = "registry.decide_approval"
MODEL_PACKAGE = "registry.register"


def raw_data_schedule() -> Any:
    """Runs start when the raw data is updated, and also on the cron of FRAUD_DETECTION_SCHEDULE."""
    raw_data_updated = RAW_DATA["claims"] | RAW_DATA["customers"]
    if SETTINGS.schedule is None:
        return raw_data_updated
    return AssetOrTimeSchedule(
        timetable=CronTriggerTimetable(SETTINGS.schedule, timezone="UTC"), assets=raw_data_updated
    )


def dag_params() -> dict[str, Param]:
    def number(default: float, title: str, description: str, section: str, **bounds: Any) -> Param:
        kind = "integer" if isinstance(default, int) else "number"
        return Param(default, type=kind, title=title, description=description, section=section, **bounds)

    def instance_type(default: str, shape: str, what: str) -> Param:
        return Param(
            default, type="string", enum=list(configs.instance_types(shape)), title=f"{what} instance type",
            description=f"SageMaker instance type of the {what.lower()}.", section="Instances",
        )

    tuning_ranges = {}
    for hyperparameter in configs.TUNED_HYPERPARAMETERS:
        for end, default in (("min", hyperparameter.low), ("max", hyperparameter.high)):
            integral = hyperparameter.kind == "Integer"
            tuning_ranges[f"{hyperparameter.name}_{end}"] = number(
                int(default) if integral else float(default),
                f"{hyperparameter.name} range {end}",
                f"{end.capitalize()} of the tuning range of {hyperparameter.name} ({hyperparameter.description}; "
                f"{hyperparameter.scaling.lower()} scale).",
                "Tuning",
                minimum=int(hyperparameter.lowest) if integral else hyperparameter.lowest,
                maximum=int(hyperparameter.highest) if integral else hyperparameter.highest,
            )
    return {
        "prefix": Param(
            SETTINGS.prefix, type="string", pattern=rf"^[a-z0-9](-*[a-z0-9]){{0,{configs.PREFIX_MAX_LENGTH - 1}}}$",
            title="Prefix", section="Data",
            description="Names the feature groups (<prefix>-claims, -customers), the model package group and "
            "the S3 folder of the run's files. Lower-case letters, digits and hyphens.",
        ),
        "claims_file": Param(
            SETTINGS.claims_file, type="string", minLength=1, title="Raw claims CSV", section="Data",
            description="Local file uploaded to s3://<bucket>/<prefix>/raw/claims.csv when 'Upload raw data' is on.",
        ),
        "customers_file": Param(
            SETTINGS.customers_file, type="string", minLength=1, title="Raw customers CSV", section="Data",
            description="Local file uploaded to s3://<bucket>/<prefix>/raw/customers.csv when 'Upload raw data' "
            "is on.",
        ),
        "upload_raw_data": Param(
            SETTINGS.upload_raw_data, type="boolean", title="Upload raw data", section="Data",
            description="Upload the raw CSV files above first. Off: use what is in S3 already. Runs started by "
            "an update of the raw-data assets never upload.",
        ),
        "ingest_mode": Param(
            configs.INGEST_MODES[0], type="string", enum=list(configs.INGEST_MODES), title="Ingestion mode",
            section="Feature Store",
            description="online_and_offline: PutRecord, as records arrive. offline_only: a batch write of the "
            "offline store (Parquet under the group's Glue table), for backfills; the online store is left as it "
            "is. Either way, records unchanged since the online store's copy are not put again.",
        ),
        "ingest_instance_count": number(1, "Ingestion instances",
                                        "Instances of the ingest job; each ingests its share of the processed "
                                        "files.", "Feature Store", minimum=1, maximum=10),
        "test_fraction": number(0.2, "Test fraction", "Share of the policies held out as test set.", "Dataset",
                                minimum=0.05, maximum=0.5),
        "validation_fraction": number(0.2, "Validation fraction",
                                      "Share of the remaining policies used as validation set.", "Dataset",
                                      minimum=0.05, maximum=0.5),
        "split_seed": number(0, "Split seed", "Seed of the stratified splits.", "Dataset", minimum=0),
        "balance_facet": Param(
            False, type="boolean", title="Balance the facet (SMOTE)", section="Dataset",
            description="Mitigate bias as the reference does: add synthetic rows (SMOTE-NC) of the smaller gender "
            "group to the training set until, for each label, it holds as many women as others. Validation and "
            "test stay as drawn.",
        ),
        "max_depth": number(3, "Baseline max_depth", "Depth of the baseline model's trees.", "Baseline model",
                            minimum=1, maximum=10),
        "eta": number(0.2, "Baseline eta", "Learning rate of the baseline model.", "Baseline model",
                      exclusiveMinimum=0, maximum=1),
        "num_round": number(100, "Baseline num_round", "Boosting rounds of the baseline model.", "Baseline model",
                            minimum=1, maximum=2000),
        "tuning": Param(True, type="boolean", title="Tune", section="Tuning",
                        description="Run a Bayesian hyperparameter search on validation:auc; off: the baseline "
                        "model goes forward."),
        "tuning_max_jobs": number(8, "Tuning jobs", "Training jobs the search may run.", "Tuning",
                                  minimum=1, maximum=100),
        "tuning_parallel_jobs": number(2, "Parallel tuning jobs", "Training jobs run at the same time.", "Tuning",
                                       minimum=1, maximum=10),
        "tuning_seed": number(0, "Tuning seed", "Seed of the search (RandomSeed): the same seed on the same data "
                              "gives the same trials and the same tuned model.", "Tuning", minimum=0,
                              maximum=2**31 - 1),
        **tuning_ranges,
        "processing_instance_type": instance_type(
            SETTINGS.processing_instance_type, "ProcessingInstanceType", "Processing jobs"
        ),
        "processing_instance_count": number(1, "Processing instances", "Instances per processing job.",
                                            "Instances", minimum=1, maximum=10),
        "training_instance_type": instance_type(SETTINGS.training_instance_type, "TrainingInstanceType",
                                                "Training jobs"),
        "training_instance_count": number(1, "Training instances", "Instances per training job.", "Instances",
                                          minimum=1, maximum=10),
        "endpoint_instance_type": instance_type(SETTINGS.endpoint_instance_type, "ProductionVariantInstanceType",
                                                "Endpoint"),
        "endpoint_instance_count": number(1, "Endpoint instances", "Instances behind the endpoint.", "Instances",
                                          minimum=1, maximum=10),
        # 3.3 % of claims are fraud: at 0.5 the model flags next to nothing, and precision, recall,
        # F1 and the post-training bias metrics degenerate (DPPL 0, DI 1). At 0.1 it flags about 5 %
        # of the claims, with |DPPL| about 0.04 on the reference split.
        "threshold": number(0.1, "Probability threshold",
                            "Fraud probability from which a claim counts as predicted fraud (evaluation, "
                            "post-training bias). About 3 % of claims are fraud, so keep it low.",
                            "Evaluation", exclusiveMinimum=0, exclusiveMaximum=1),
        "approval_status": Param(
            decisions.PENDING, type="string", enum=list(decisions.APPROVAL_STATUSES), title="Approval status",
            section="Registry", description="Status the model package is registered with.",
        ),
        "auto_approve": Param(False, type="boolean", title="Auto-approve", section="Registry",
                              description="Register as Approved when the model passes both gates below."),
        "min_test_auc": number(0.8, "Minimum test AUC", "Gate: ROC-AUC on the test set at least this.",
                               "Registry", minimum=0, maximum=1),
        "max_abs_dppl": number(0.1, "Largest |DPPL|",
                               "Gate: absolute difference in positive proportions of predicted labels (female "
                               "customers vs others) at most this.", "Registry", minimum=0, maximum=1),
        "deploy": Param(True, type="boolean", title="Deploy", section="Deployment",
                        description="Deploy the model to the endpoint when its package is Approved."),
        "endpoint_name": Param(
            SETTINGS.endpoint_name, type="string", pattern=r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$",
            title="Endpoint name", section="Deployment",
            description="Real-time endpoint to create, or update when it exists.",
        ),
    }


def lineage(task_id: str, step: str, action_type: str, inputs: list[dict[str, str]],
            outputs: list[dict[str, str]], source_uri: str | None = None) -> SageMakerLineageOperator:
    return SageMakerLineageOperator(
        task_id=task_id,
        action_name=resource_name(PREFIX, step, RUN_TOKEN),
        action_type=action_type,
        inputs=inputs,
        outputs=outputs,
        context_name=resource_name(PREFIX, "run", RUN_TOKEN),
        source_uri=source_uri,
    )


def artifact(uri: str, kind: str) -> dict[str, str]:
    return {"uri": uri, "type": kind}


def clarify_bias(stage: str, analysis_config: Any, dataset_uri: str) -> None:
    """Clarify's analysis_config.json to S3, then the Clarify processing job that reads it."""
    upload_analysis_config = S3CreateObjectOperator(
        task_id="upload_analysis_config", s3_key=LAYOUT.clarify_config(stage), data=analysis_config, replace=True
    )
    clarify_job = SageMakerProcessingOperator(
        task_id="clarify_job",
        config=configs.clarify_job(
            SETTINGS, LAYOUT,
            name=resource_name(PREFIX, f"bias-{stage}", RUN_TOKEN),
            stage=stage,
            dataset_uri=dataset_uri,
            instance_type=param("processing_instance_type"),
            instance_count=param("processing_instance_count"),
        ),
        **JOB_WAIT,
    )
    upload_analysis_config >> clarify_job


with DAG(
    dag_id="fraud_detection",
    description="SageMaker lifecycle of the claim-fraud model: data prep to real-time endpoint",
    doc_md=__doc__,
    schedule=raw_data_schedule(),
    catchup=False,
    max_active_runs=1,  # runs share the feature groups and the endpoint
    params=dag_params(),
    user_defined_filters={"short_hash": configs.short_hash},
    user_defined_macros={"sagemaker_image": SETTINGS.image_uri},
    default_args={**SETTINGS.retry_args, "retry_policy": DeterministicFailuresFailAtOnce()},
    tags=["fraud-detection", "sagemaker", "ml"],
) as dag:

    @task
    def check_params(params: dict[str, Any] | None = None) -> None:
        decisions.check_params(params)

    checked = check_params()
    # The run's files and the feature groups' offline store live in this bucket.
    create_bucket = S3CreateBucketOperator(task_id="create_bucket", bucket_name=SETTINGS.bucket)
    checked >> create_bucket

    @task_group
    def data_prep() -> list[SageMakerProcessingOperator]:
        """Raw CSVs and job code to S3, then the Data Wrangler transforms as processing jobs."""
        upload_code = LocalFolderToS3Operator(
            task_id="upload_code", folder=SETTINGS.jobs_dir, dest_uri=LAYOUT.code, pattern="*.py"
        )

        @task.short_circuit(ignore_downstream_trigger_rules=False)
        def upload_raw_data(params: dict[str, Any] | None = None, dag_run: Any = None) -> bool:
            return decisions.should_upload_raw_data(params["upload_raw_data"], dag_run.run_type)

        upload = upload_raw_data()
        create_bucket >> [upload_code, upload]
        jobs = []
        uploads = {}
        for dataset in DATASETS:
            raw_uri = SETTINGS.raw_data_uri(dataset, PREFIX)
            uploads[dataset] = upload_raw = LocalFilesystemToS3Operator(
                task_id=f"upload_raw_{dataset}", filename=param(f"{dataset}_file"), dest_key=raw_uri, replace=True
            )
            preprocess = SageMakerProcessingOperator(
                task_id=f"preprocess_{dataset}",
                config=configs.preprocess_job(
                    SETTINGS, LAYOUT,
                    name=resource_name(PREFIX, f"prep-{dataset}", RUN_TOKEN),
                    dataset=dataset,
                    raw_uri=raw_uri,
                    event_time=RUN_EPOCH,
                    instance_type=param("processing_instance_type"),
                    instance_count=param("processing_instance_count"),
                    parts=param("ingest_instance_count"),
                    # The claims' check that every policy has its customer reads the raw customers.
                    customers_uri=SETTINGS.raw_data_uri("customers", PREFIX) if dataset == "claims" else None,
                ),
                trigger_rule=TriggerRule.NONE_FAILED,  # the raw upload may be skipped
                **JOB_WAIT,
            )
            record = lineage(
                f"lineage_preprocess_{dataset}", f"prep-{dataset}", "Processing",
                inputs=[artifact(raw_uri, "DataSet"), artifact(LAYOUT.code, "Code")],
                outputs=[artifact(LAYOUT.processed(dataset), "DataSet")],
                source_uri=pulled(preprocess.task_id, "Processing", "ProcessingJobArn"),
            )
            upload >> upload_raw >> preprocess >> record
            upload_code >> preprocess
            jobs.append(preprocess)
        uploads["customers"] >> jobs[DATASETS.index("claims")]
        return jobs

    @task_group
    def feature_store(processed: list[SageMakerProcessingOperator]) -> None:
        """The feature groups (created or found), the processed records ingested by a processing
        job (new or changed records only; PutRecord, or a batch write of the offline store) once
        both datasets are processed, and a wait until the offline store holds them all."""
        for dataset in DATASETS:
            group = SageMakerCreateFeatureGroupOperator(
                task_id=f"create_{dataset}_group",
                config=configs.feature_group(
                    SETTINGS, name=configs.feature_group_name(PREFIX, dataset), dataset=dataset, prefix=PREFIX
                ),
                check_interval=SETTINGS.check_interval,
            )
            ingest = SageMakerProcessingOperator(
                task_id=f"ingest_{dataset}",
                config=configs.ingest_job(
                    SETTINGS, LAYOUT,
                    name=resource_name(PREFIX, f"ingest-{dataset}", RUN_TOKEN),
                    dataset=dataset,
                    feature_group_name=pulled(group.task_id, "FeatureGroupName"),
                    mode=param("ingest_mode"),
                    instance_type=param("processing_instance_type"),
                    instance_count=param("ingest_instance_count"),
                ),
                **JOB_WAIT,
            )
            offline = FeatureStoreOfflineStoreSensor(
                task_id=f"wait_for_{dataset}_offline_store",
                database=pulled(group.task_id, "OfflineStoreConfig", "DataCatalogConfig", "Database"),
                table=pulled(group.task_id, "OfflineStoreConfig", "DataCatalogConfig", "TableName"),
                ingestion_summary_uri=LAYOUT.ingestion(dataset),
                output_location=f"{LAYOUT.athena_results}offline-store-checks/",
                workgroup=SETTINGS.athena_workgroup,
                poke_interval=SETTINGS.check_interval,
                timeout=1800,
                mode="poke",
            )
            record = lineage(
                f"lineage_ingest_{dataset}", f"ingest-{dataset}", "Ingestion",
                inputs=[artifact(LAYOUT.processed(dataset), "DataSet"), artifact(LAYOUT.code, "Code")],
                outputs=[artifact(pulled(group.task_id, "FeatureGroupArn"), "FeatureGroup")],
                source_uri=pulled(ingest.task_id, "Processing", "ProcessingJobArn"),
            )
            # Ingestion starts only when both datasets are processed: a bad raw file stops the
            # run before anything of it reaches the feature store.
            create_bucket >> group >> ingest >> offline >> record
            processed >> ingest

    @task_group
    def dataset() -> None:
        """One row per policy from the offline stores (Athena), split train/validation/test."""
        claims_group, customers_group = "feature_store.create_claims_group", "feature_store.create_customers_group"
        catalog = ("OfflineStoreConfig", "DataCatalogConfig")
        query = AthenaOperator(
            task_id="query",
            query=sql.dataset_query(
                pulled(claims_group, *catalog, "Database"),
                pulled(claims_group, *catalog, "TableName"),
                pulled(customers_group, *catalog, "TableName"),
            ),
            database=pulled(claims_group, *catalog, "Database"),
            output_location=LAYOUT.athena_results,
            workgroup=SETTINGS.athena_workgroup,
            sleep_time=SETTINGS.check_interval,
        )
        split = SageMakerProcessingOperator(
            task_id="split",
            config=configs.split_job(
                SETTINGS, LAYOUT,
                name=resource_name(PREFIX, "split", RUN_TOKEN),
                query_result_uri=f"{LAYOUT.athena_results}{pulled(query.task_id)}.csv",
                test_fraction=param("test_fraction"),
                validation_fraction=param("validation_fraction"),
                seed=param("split_seed"),
                balance_facet=param("balance_facet"),
                instance_type=param("processing_instance_type"),
                instance_count=param("processing_instance_count"),
            ),
            **JOB_WAIT,
        )
        record = lineage(
            "lineage_dataset", "dataset", "Processing",
            inputs=[
                artifact(pulled(claims_group, "FeatureGroupArn"), "FeatureGroup"),
                artifact(pulled(customers_group, "FeatureGroupArn"), "FeatureGroup"),
                artifact(LAYOUT.code, "Code"),
            ],
            outputs=[artifact(LAYOUT.split(name), "DataSet") for name in configs.SPLITS],
            source_uri=pulled(split.task_id, "Processing", "ProcessingJobArn"),
        )
        query >> split >> record

    @task_group
    def bias_before_training() -> None:
        """Clarify pre-training bias metrics (CI, DPL, ...) of the training split."""
        clarify_bias("pre", clarify.analysis_config_json(clarify.analysis_config("pre")), LAYOUT.split("train"))

    @task_group
    def train() -> None:
        """The baseline model (reference hyperparameters) and, when on, a Bayesian tuning job."""
        train_baseline = SageMakerTrainingOperator(
            task_id="train_baseline",
            config=configs.training_job(
                SETTINGS, LAYOUT,
                name=resource_name(PREFIX, "train", RUN_TOKEN),
                hyperparameters={name: param(name) for name in ("max_depth", "eta", "num_round")},
                instance_type=param("training_instance_type"),
                instance_count=param("training_instance_count"),
            ),
            print_log=SETTINGS.print_job_logs,
            **JOB_WAIT,
        )

        @task.short_circuit(ignore_downstream_trigger_rules=False)
        def tuning_enabled(params: dict[str, Any] | None = None) -> bool:
            return params["tuning"]

        tune = SageMakerTuningOperator(
            task_id="tune",
            config=configs.tuning_job(
                SETTINGS, LAYOUT,
                name=configs.tuning_job_name(PREFIX, RUN_TOKEN, ATTEMPT),
                ranges={
                    h.name: (param(f"{h.name}_min"), param(f"{h.name}_max")) for h in configs.TUNED_HYPERPARAMETERS
                },
                max_jobs=param("tuning_max_jobs"),
                parallel_jobs=param("tuning_parallel_jobs"),
                random_seed=param("tuning_seed"),
                instance_type=param("training_instance_type"),
                instance_count=param("training_instance_count"),
            ),
            **JOB_WAIT,
        )
        best = SageMakerBestTrainingJobOperator(
            task_id="best_tuned", tuning_job_name=pulled(tune.task_id, "Tuning", "HyperParameterTuningJobName")
        )

        @task(trigger_rule=TriggerRule.NONE_FAILED)
        def select_model(ti: Any = None) -> dict[str, Any]:
            """The best tuned model when tuning ran, else the baseline."""
            baseline_job = ti.xcom_pull(task_ids=BASELINE_TRAINING)["Training"]
            return decisions.selected_model(baseline_job, ti.xcom_pull(task_ids=best.task_id))

        selected = select_model()
        record = lineage(
            "lineage_training", "train", "Training",
            inputs=[artifact(LAYOUT.split("train"), "DataSet"), artifact(LAYOUT.split("validation"), "DataSet")],
            outputs=[artifact(pulled(SELECTED_MODEL, "ModelDataUrl"), "Model")],
            source_uri=pulled(SELECTED_MODEL, "TrainingJobName"),
        )
        tuning_enabled() >> tune >> best
        [train_baseline, best] >> selected >> record

    @task_group
    def evaluate() -> None:
        """The chosen model and the baseline scored on the untouched test set."""
        SageMakerProcessingOperator(
            task_id="evaluate",
            config=configs.evaluation_job(
                SETTINGS, LAYOUT,
                name=resource_name(PREFIX, "eval", RUN_TOKEN),
                model_uri=pulled(SELECTED_MODEL, "ModelDataUrl"),
                baseline_model_uri=pulled(BASELINE_TRAINING, "Training", "ModelArtifacts", "S3ModelArtifacts"),
                threshold=param("threshold"),
                instance_type=param("processing_instance_type"),
                instance_count=param("processing_instance_count"),
            ),
            **JOB_WAIT,
        )

    @task_group
    def model() -> None:
        SageMakerModelOperator(
            task_id="create_model",
            config=configs.model(
                SETTINGS,
                name=resource_name(PREFIX, "model", RUN_TOKEN, ATTEMPT),
                model_data_url=pulled(SELECTED_MODEL, "ModelDataUrl"),
            ),
        )

    @task_group
    def bias_after_training() -> None:
        """Clarify post-training bias metrics (DPPL, DI, ...) of the model's test-set predictions."""

        @task
        def analysis_config(params: dict[str, Any] | None = None, ti: Any = None) -> str:
            return clarify.analysis_config_json(
                clarify.analysis_config(
                    "post",
                    model_name=ti.xcom_pull(task_ids=CREATED_MODEL)["Model"]["ModelName"],
                    instance_type=params["endpoint_instance_type"],
                    probability_threshold=params["threshold"],
                )
            )

        clarify_bias("post", analysis_config(), LAYOUT.split("test"))

    @task_group
    def registry() -> None:
        """The model package, with quality and bias reports as model metrics, and its status."""

        @task
        def decide_approval(
            evaluation_uri: str, post_training_bias_uri: str, params: dict[str, Any] | None = None
        ) -> dict[str, str]:
            status, reason = decisions.approval_status(
                requested=params["approval_status"],
                auto_approve=params["auto_approve"],
                min_test_auc=params["min_test_auc"],
                max_abs_dppl=params["max_abs_dppl"],
                evaluation=read_s3_json(evaluation_uri),
                post_training_analysis=read_s3_json(post_training_bias_uri),
            )
            print(f"Model approval status: {status} ({reason})")
            return {"status": status, "reason": reason}

        model_url = pulled(SELECTED_MODEL, "ModelDataUrl")
        register = RegisterModelVersionOperator(
            task_id="register",
            image_uri=sagemaker_image("xgboost"),
            model_url=model_url,
            package_group_name=PREFIX,
            package_group_desc="Claim fraud models of the fraud-detection pipeline",
            package_desc=f"Claim fraud model of run {{{{ run_id }}}}: {pulled(APPROVAL, 'reason')}",
            extras=configs.model_package_extras(
                SETTINGS, LAYOUT,
                model_data_url=model_url,
                approval_status=pulled(APPROVAL, "status"),
                endpoint_instance_type=param("endpoint_instance_type"),
                properties={
                    "run_id": "{{ run_id }}",
                    "training_job": pulled(SELECTED_MODEL, "TrainingJobName"),
                    "test_data_uri": LAYOUT.split_file("test"),
                },
            ),
        )
        record = lineage(
            "lineage_register", "register", "ModelRegistration",
            inputs=[
                artifact(model_url, "Model"),
                artifact(LAYOUT.evaluation_report, "ModelQualityReport"),
                artifact(LAYOUT.clarify_report("pre"), "BiasReport"),
                artifact(LAYOUT.clarify_report("post"), "BiasReport"),
            ],
            outputs=[artifact(pulled(register.task_id), "ModelPackage")],
            source_uri=pulled(register.task_id),
        )
        decide_approval(LAYOUT.evaluation_report, LAYOUT.clarify_report("post")) >> register >> record

    @task_group
    def deploy() -> None:
        """Only an Approved package is deployed: endpoint config, endpoint (created or updated),
        then a smoke test through sagemaker-runtime."""

        @task.short_circuit
        def deploy_approved(params: dict[str, Any] | None = None, ti: Any = None) -> bool:
            status = ti.xcom_pull(task_ids=APPROVAL)["status"]
            return params["deploy"] and status == decisions.APPROVED

        deployment = deploy_to_endpoint(
            SETTINGS,
            model_name=pulled(CREATED_MODEL, "Model", "ModelName"),
            model_package_arn=pulled(MODEL_PACKAGE),
            test_data_uri=LAYOUT.split_file("test"),
            context_name=resource_name(PREFIX, "run", RUN_TOKEN),
        )
        deploy_approved() >> deployment

    store, data = feature_store(data_prep()), dataset()
    before, trained, scored, created = bias_before_training(), train(), evaluate(), model()
    after, registered, deployed = bias_after_training(), registry(), deploy()

    store >> data >> [before, trained]
    trained >> [scored, created]
    created >> after
    [before, scored, after] >> registered >> deployed
