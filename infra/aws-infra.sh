#!/usr/bin/env bash
# make aws-infra: deploy infra/template.yaml with the AWS CLI to the account and region of the
# current credentials (AWS_PROFILE, AWS_DEFAULT_REGION, ...), then print the .env lines Airflow
# needs. Usage: aws-infra.sh AWS_CLI STACK_NAME [Key=Value ...] (the template's parameters).
set -euo pipefail
aws_cli=$1
stack=$2
shift 2
template="$(dirname "$0")/template.yaml"

overrides=()
if [ $# -gt 0 ]; then
    overrides=(--parameter-overrides "$@")
fi
"$aws_cli" cloudformation deploy --stack-name "$stack" --template-file "$template" \
    --capabilities CAPABILITY_NAMED_IAM --no-fail-on-empty-changeset "${overrides[@]}" >&2

value() { echo -n "Stacks[0].Outputs[?OutputKey=='$1'].OutputValue|[0]"; }
query="[Stacks[0].StackId, $(value BucketName), $(value ExecutionRoleArn), $(value AirflowRoleArn), \
$(value Prefix), $(value EndpointName)]"
read -r stack_id bucket execution_role airflow_role prefix endpoint < <(
    "$aws_cli" cloudformation describe-stacks --stack-name "$stack" --output text --query "$query")
region=$(echo "$stack_id" | cut -d: -f4)

echo "# .env lines of stack $stack ($stack_id):" >&2
echo "AWS_DEFAULT_REGION=$region"
echo "FRAUD_BUCKET=$bucket"
echo "FRAUD_EXECUTION_ROLE_ARN=$execution_role"
echo "FRAUD_PREFIX=$prefix"
echo "FRAUD_ENDPOINT_NAME=$endpoint"
echo "AIRFLOW_CONN_AWS_DEFAULT='{\"conn_type\": \"aws\", \"extra\": {\"region_name\": \"$region\", \"role_arn\": \"$airflow_role\"}}'"
