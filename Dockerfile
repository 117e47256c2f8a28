# One image for every process of docker-compose.yml (MLflow server, Prefect server, workers, service):
# the project with its pinned dependencies, the CPU build of torch, and the S3 clients the compose stack's
# object store needs (MLflow artifacts, the DVC remote).
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends git && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml constraints.txt ./
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
COPY . .
RUN pip install --no-cache-dir -c constraints.txt . "dvc[s3]" boto3 \
    && git config --global user.name flightloop-worker && git config --global user.email worker@localhost
ENV PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1 GIT_PYTHON_REFRESH=quiet
