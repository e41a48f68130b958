"""segflow in Airflow: one BashOperator per pipeline, run daily for the run's date.

Deploy the segflow binary and this repository's pipelines where the workers can reach them and
set, on the workers:
  SEGFLOW_BIN          the binary (default: `segflow` on PATH)
  SEGFLOW_PIPELINES    the folder of pipeline files (default: /opt/segflow/pipelines)
  SEGFLOW_OUTPUT_ROOT  where the tables go, one folder per pipeline (default: /data/segflow)

What segflow gives the scheduler:
- the run date comes from the DAG run, never from `ds` alone: an Airflow 3 asset-triggered run
  has no logical date, so the template falls back to the run's `run_after`;
- `--run-id {{ run_id }}` names every file, manifest and run record after the Airflow run;
- exit codes: 0 ok, 1 run or data-test failure (retried), 2 invalid pipeline or command line;
  never 99 (BashOperator's "skipped");
- the last line of stdout is a one-line JSON summary, which BashOperator pushes to XCom;
- a rerun of a date replaces its partitions whole (idempotent), and a second run of the same
  date while one is active fails at once with the holder's run id, so retries are safe.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG

SEGFLOW = os.environ.get("SEGFLOW_BIN", "segflow")
PIPELINES = os.environ.get("SEGFLOW_PIPELINES", "/opt/segflow/pipelines")
OUTPUT_ROOT = os.environ.get("SEGFLOW_OUTPUT_ROOT", "/data/segflow")

# The run's date: the logical date when there is one, else when the run was due.
RUN_DATE = "{{ (dag_run.logical_date or dag_run.run_after).strftime('%Y-%m-%d') }}"

with DAG(
    dag_id="segflow_pipelines",
    description="Customer features, segments and churn scores with segflow",
    schedule="@daily",
    start_date=datetime(2025, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 2, "retry_delay": timedelta(minutes=5)},
    tags=["segflow"],
) as dag:
    for pipeline in ("demo", "online_retail"):
        BashOperator(
            task_id=f"run_{pipeline}",
            bash_command=(
                f"{SEGFLOW} run {PIPELINES}/{pipeline}.yaml"
                f" --run-date {RUN_DATE} --run-id '{{{{ run_id }}}}'"
                f" --output-root {OUTPUT_ROOT}/{pipeline} --log-format json"
            ),
            # The summary line (last line of stdout) goes to XCom.
            do_xcom_push=True,
            # Exit 2 is a broken pipeline file: retrying will not fix it.
            skip_on_exit_code=None,
        )
