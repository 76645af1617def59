#!/bin/sh
# Runs once, when the postgres volume is new: MLflow's database beside Optuna's (POSTGRES_DB).
# They cannot share one: both keep their schema version in a table named alembic_version.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" --set db="$MLFLOW_DB" <<'SQL'
CREATE DATABASE :"db";
SQL
