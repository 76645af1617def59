# One image for the sweep workers and the MLflow server: this project with its pinned requirements
# and Debian's Fashion-MNIST (the files `make data` installs). See docker-compose.yml.
FROM python:3.11-slim-bookworm

RUN apt-get update \
    && apt-get install -y --no-install-recommends dataset-fashion-mnist \
    && rm -rf /var/lib/apt/lists/*

# torch from PyPI brings CUDA (several GB). On CPU-only hosts build with the CPU wheels instead:
#   docker compose build --build-arg PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG PIP_EXTRA_INDEX_URL=
WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt

COPY . .
# A user of its own; /mlartifacts is the MLflow server's artifact volume (a new volume takes this owner).
RUN useradd --create-home sweeps && mkdir /mlartifacts && chown sweeps /mlartifacts
USER sweeps
ENV PYTHONUNBUFFERED=1 \
    MPLBACKEND=Agg \
    MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false
CMD ["python", "cli.py", "--help"]
