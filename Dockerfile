# prune2deploy, CPU. Build: docker build -t p2d .   Use: docker run --rm -v $PWD/runs:/app/runs p2d run squad --sparsity 0.8
FROM python:3.11-slim
WORKDIR /app
ENV HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PATH=/app/.venv/bin:$PATH
# `docker run -p 8080:8080 -p 8082:8082 IMAGE serve ART`: inside a container p2d serve listens on
# every interface (it says so at start); outside one the default stays 127.0.0.1
ENV P2D_SERVE_HOST=0.0.0.0
EXPOSE 8080 8082
COPY pyproject.toml README.md ./
COPY prune2deploy ./prune2deploy
COPY pipelines ./pipelines
COPY scripts ./scripts
# The same set-up as the README's commands: .venv with the package, data and model packages.
RUN bash scripts/bootstrap
ENTRYPOINT ["p2d"]
CMD ["--help"]
