# One image for the bot and for its GPU workers (compose.yaml, README "With Docker Compose").
# `docker build -t sdbot .`; the bot: `docker run sdbot`; a worker: `docker run --gpus all
# sdbot worker --name gpu-2`.
FROM python:3.11-slim

# torch first and pinned, as the Makefile installs it: on Linux the PyPI wheel of this
# version carries CUDA, so the same image runs on a GPU machine. Another build:
# `docker build --build-arg TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128" .`
ARG TORCH="torch==2.13.0"
RUN pip install --no-cache-dir $TORCH

WORKDIR /app
COPY pyproject.toml README.md ./
COPY bot bot
COPY engine engine
COPY cogs cogs
COPY data data
RUN pip install --no-cache-dir .

# The database, pictures and inputs in one volume; downloaded models in another, shared by
# the services of one machine.
ENV SDBOT_DATA_DIR=/data \
    HF_HOME=/cache/huggingface
VOLUME ["/data", "/cache"]
ENTRYPOINT ["python", "-m", "bot"]
