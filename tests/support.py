"""What tests share besides fixtures: the project's root, the local PostgreSQL, docker-compose.yml's
command lines, and the process helpers of the server tests. Imported as `support` (tests/ is on the
path through its conftest); fixtures are conftest.py's.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

POSTGRES = "127.0.0.1:5432"  # the local server, trust authentication (started before sessions and CI)
COMPOSE_FILE = ROOT / "docker-compose.yml"


def postgres_admin(statement: str) -> None:
    import psycopg2

    try:
        connection = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres")
    except psycopg2.OperationalError as error:
        pytest.fail(f"PostgreSQL is not reachable on {POSTGRES} ({error}); start it with "
                    "`pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`")
    connection.autocommit = True  # CREATE / DROP DATABASE cannot run in a transaction
    try:
        with connection.cursor() as cursor:
            cursor.execute(statement)
    finally:
        connection.close()


def interpolate(text: str, variables: dict[str, str]) -> str:
    """docker compose's interpolation: $$, $VAR, ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}."""
    import re

    def value(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        name, operator, argument = match.group(1) or match.group(4), match.group(2), match.group(3)
        found = variables.get(name)
        if operator in (":-", "-") and (found is None or (operator == ":-" and not found)):
            return argument
        if operator in (":?", "?") and (found is None or (operator == ":?" and not found)):
            raise KeyError(f"compose needs ${name}: {argument}")
        return found or ""

    return re.sub(r"\$(?:\$|\{(\w+)(?:(:?[-?])([^}]*))?\}|(\w+))", value, text)


def env_example() -> dict[str, str]:
    """The variables of .env.example, as `cp .env.example .env` gives them to docker compose."""
    pairs = (line.split("=", 1) for line in (ROOT / ".env.example").read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#"))
    return {key.strip(): value.strip() for key, value in pairs}


def compose_command(service: str, variables: dict[str, str],
                    local: dict[str, str] | None = None) -> tuple[list[str], dict[str, str]]:
    """(argv, environment) of a docker-compose.yml service, interpolated with `variables`; each
    (container value -> local value) of `local` is replaced in both, e.g. the host names."""
    import yaml

    spec = yaml.safe_load(COMPOSE_FILE.read_text())["services"][service]
    environment = spec.get("environment") or {}
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)

    def here(text: str) -> str:
        text = interpolate(str(text), variables)
        for container, host in (local or {}).items():
            text = text.replace(container, host)
        return text

    return [here(arg) for arg in spec["command"]], {key: here(value) for key, value in environment.items()}


def stop_group(process, timeout: float = 20) -> None:
    """End a server started with start_new_session: SIGTERM to its whole process group (it and its
    workers), SIGKILL if it has not ended within `timeout` seconds."""
    import os
    import signal
    import subprocess

    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
