"""docker-compose.yml without Docker: every command it runs parses as a valid command line, the
defaults are safe (loopback ports, credentials from .env, host checks on), and the PostgreSQL
init script makes MLflow's database. Running the topology itself is the job of
tests/sweeps/execution/test_workers.py.
"""

import os
import re
import subprocess
import uuid

import click
import pytest
import yaml
from support import COMPOSE_FILE, POSTGRES, ROOT, compose_command, env_example, interpolate, postgres_admin


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def parse(group: click.Group, prog: str, argv: list[str], environment: dict[str, str]) -> click.Context:
    """click's own parsing of `prog argv` down to the sub-command, with the service's environment
    (options read from variables, like --storage from $OPTUNA_STORAGE); nothing is run."""
    saved = dict(os.environ)
    os.environ.update(environment)
    try:
        context = group.make_context(prog, list(argv), resilient_parsing=False)
        name, command, rest = group.resolve_command(context, context._protected_args + context.args)
        return command.make_context(name, rest, parent=context)
    finally:
        os.environ.clear()
        os.environ.update(saved)


def test_every_command_is_a_valid_invocation_of_our_cli_or_mlflow(compose):
    from mlflow.cli import cli as mlflow_cli

    from cli import cli
    from sweeps.definitions.loader import load_definition

    variables = env_example()
    commands = {name: compose_command(name, variables) for name, spec in compose["services"].items()
                if "command" in spec}
    assert set(commands) == {"mlflow", "create", "worker"}
    for name in ("create", "worker"):
        argv, environment = commands[name]
        assert argv[:2] == ["python", "cli.py"]
        context = parse(cli, "cli.py", argv[2:], environment)
        assert context.command.name == "sweep"
        load_definition(context.params["name"])  # the sweep exists in the image's sweeps/
        assert context.params["storage"].startswith("postgresql://")  # from $OPTUNA_STORAGE
        assert "@postgres:5432/" in context.params["storage"]
        assert context.params["tracking_uri"] == "http://mlflow:5000"
    assert parse(cli, "cli.py", commands["create"][0][2:], commands["create"][1]).params["create"]
    argv, environment = commands["mlflow"]
    context = parse(mlflow_cli, "mlflow", argv[1:], environment)
    assert context.command.name == "server"
    assert context.params["backend_store_uri"].startswith("postgresql://")
    assert context.params["serve_artifacts"] and context.params["artifacts_destination"] == "/mlartifacts"
    assert {"mlflow:5000", "localhost:*", "127.0.0.1:*"} <= set(context.params["allowed_hosts"].split(","))
    assert environment["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"


def test_defaults_are_safe_and_credentials_come_from_the_env_file(compose):
    text = COMPOSE_FILE.read_text()
    services = compose["services"]
    for name, spec in services.items():
        for mapping in spec.get("ports", []):
            assert interpolate(mapping, env_example()).startswith("127.0.0.1:"), f"{name} publishes {mapping}"
    assert services["postgres"]["env_file"] == ".env"
    assert "volumes" in services["postgres"] and "volumes" in services["mlflow"]
    for name in ("postgres", "mlflow"):
        assert services[name]["healthcheck"]["test"], f"{name} has no health check"
    # no literal credentials: users and passwords in URLs, and password settings, are variable references
    for match in re.finditer(r"postgresql://([^@\s\"]*)@", text):
        user, _, password = match.group(1).partition(":")
        assert user.startswith("${") and password.startswith("${"), match.group(0)
    for name, spec in services.items():
        for key, value in (spec.get("environment") or {}).items():
            if "PASSWORD" in key or "SECRET" in key:
                assert str(value).startswith("${"), f"{name}: {key} is written out"
    # every variable without a default is documented in .env.example
    required = set(re.findall(r"\$\{(\w+):\?", text))
    assert required and required <= set(env_example())
    assert "/.env" in (ROOT / ".gitignore").read_text().split()
    worker = services["worker"]
    assert worker["depends_on"]["create"]["condition"] == "service_completed_successfully"
    assert worker["depends_on"]["mlflow"]["condition"] == "service_healthy"
    assert worker["init"] is True  # SIGTERM reaches python: trials re-queued, runs KILLED
    assert "ports" not in worker  # scalable: no fixed host port


def test_postgres_init_script_creates_the_mlflow_database():
    script = ROOT / "docker" / "postgres-init.sh"
    compose = yaml.safe_load(COMPOSE_FILE.read_text())
    assert any(str(volume).startswith("./docker/postgres-init.sh:/docker-entrypoint-initdb.d/")
               for volume in compose["services"]["postgres"]["volumes"])
    database = f"initdb_{uuid.uuid4().hex[:12]}"
    host, port = POSTGRES.split(":")
    environment = dict(os.environ, PGHOST=host, PGPORT=port, POSTGRES_USER="postgres", POSTGRES_DB="postgres",
                       MLFLOW_DB=database)
    try:
        subprocess.run(["sh", str(script)], env=environment, check=True, capture_output=True, timeout=30)
        listed = subprocess.run(["psql", "-h", host, "-p", port, "-U", "postgres", "-Atc",
                                 f"select 1 from pg_database where datname = '{database}'"],
                                capture_output=True, text=True, check=True, timeout=30)
        assert listed.stdout.strip() == "1"
    finally:
        postgres_admin(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
