# astromesh-ray on the official Ray image (Python 3.11), for docker-compose.yaml and the
# KubeRay RayService in deployments/kubernetes/.
#
#   docker build -t astromesh-ray:0.1.0 .
#   docker build -t astromesh-ray:0.1.0-gpu \
#     --build-arg BASE_IMAGE=rayproject/ray:2.60.0-py311-gpu --build-arg RAY_EXTRAS=serve,llm .
#   docker run --rm -p 8000:8000 -e ASTROMESH_API_KEYS="$(cat api-keys.yaml)" astromesh-ray:0.1.0
#
# The default command serves config/ (copied in) on 0.0.0.0:8000 in a Ray cluster of its
# own; without API keys ($ASTROMESH_API_KEYS: the entries of `astromesh keys create`) it
# refuses to start, unless given `--insecure` (docker run IMAGE astromesh serve --config
# /home/ray/astromesh/config --host 0.0.0.0 --insecure).  Another config directory:
# mount it and pass --config, or mount it at /etc/astromesh and pass --config
# /etc/astromesh.  On KubeRay the operator replaces the command with `ray start`, and
# the Serve config's config_dir resolves against $ASTROMESH_PROJECT_DIR.
#
# tests/unit/test_kubernetes.py lints this file with hadolint and checks its steps
# (the pins below equal astromesh_ray.__version__ and the Ray of pyproject.toml).
ARG BASE_IMAGE=rayproject/ray:2.60.0-py311
FROM ${BASE_IMAGE}

# The package's version, checked by pip against the copied tree; extras of the package
# and of Ray (serve,llm for in-cluster vLLM on the GPU image).
ARG ASTROMESH_VERSION=0.1.0
ARG EXTRAS=onnx,memory
ARG RAY_VERSION=2.60.0
ARG RAY_EXTRAS=serve

ENV ASTROMESH_PROJECT_DIR=/home/ray/astromesh \
    PYTHONUNBUFFERED=1 \
    RAY_USAGE_STATS_ENABLED=0

# The Ray image's user `ray` (uid 1000, group users), never root.
USER 1000:100
# COPY makes the directory (owned by that user: pip builds the package in it).
COPY --chown=1000:100 pyproject.toml README.md /home/ray/astromesh/
COPY --chown=1000:100 astromesh_ray /home/ray/astromesh/astromesh_ray
WORKDIR /home/ray/astromesh
RUN pip install --no-cache-dir "ray[${RAY_EXTRAS}]==${RAY_VERSION}" \
        "/home/ray/astromesh[${EXTRAS}]" \
        "astromesh-ray==${ASTROMESH_VERSION}" \
    && rm -rf build ./*.egg-info \
    && mkdir -p /home/ray/data

# The example configuration and the Serve configs' directories (deployments/).
COPY --chown=1000:100 config ./config
COPY --chown=1000:100 deployments ./deployments

EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]

# SIGTERM (docker stop) is a graceful shutdown of the server and its Ray cluster.
STOPSIGNAL SIGTERM
CMD ["astromesh", "serve", "--config", "/home/ray/astromesh/config", "--host", "0.0.0.0"]
