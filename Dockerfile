# cbdc-bench: the main benchmark (`cbdc-bench run`) in a container.
#   docker build -t cbdc-bench .
#   docker run --rm -v "$PWD/results:/bench/results" cbdc-bench            # 300,000 payments/s for 30 s
#   docker run --rm cbdc-bench run --profile full --seconds 10             # any other command
# Not built in CI (no container runtime there). Give the container 2+ cores and ~2 GiB.
FROM python:3.11-slim

# LightGBM's wheel (the risk model, a core dependency) links the system OpenMP runtime, which the
# slim image lacks ("libgomp.so.1: cannot open shared object file" on import otherwise).
RUN apt-get update && apt-get install -y --no-install-recommends libgomp1 && rm -rf /var/lib/apt/lists/*

WORKDIR /bench
COPY pyproject.toml README.md LICENSE ./
COPY engine ./engine
COPY loadgen ./loadgen
COPY examples ./examples
RUN pip install --no-cache-dir .

ENTRYPOINT ["cbdc-bench"]
CMD ["run", "--out", "results"]
