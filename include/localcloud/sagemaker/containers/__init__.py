"""Scripts that stand in for SageMaker's built-in containers. The local cloud runs each as a plain
script in a job's sandbox; like the containers they follow the SageMaker container contract
(SAGEMAKER_BASE_DIR standing in for /opt/ml) and know nothing of the local cloud."""

from pathlib import Path

CONTAINERS_DIR = Path(__file__).resolve().parent
XGBOOST_ALGORITHM = CONTAINERS_DIR / "xgboost_algorithm.py"  # training with the sagemaker-xgboost image
CLARIFY_PROCESSOR = CONTAINERS_DIR / "clarify.py"  # processing with the sagemaker-clarify-processing image
