# The OCELOT 2023 Grand-Challenge algorithm container: reads /input, writes
# /output/cell_classification.json, offline (no network at run time; weights come from
# the image itself).
#
#   docker build -t histozoom-ocelot --build-arg MODEL=runs/p2i2/best.ckpt .
#   docker run --rm --network none -v $PWD/sample_004:/input:ro -v $PWD/out:/output histozoom-ocelot
#
# MODEL is a checkpoint folder (config.json + model.safetensors) inside the build context.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    HF_HUB_OFFLINE=1 TORCH_HOME=/opt/torch MPLBACKEND=Agg

WORKDIR /opt/histozoom
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install "torch==2.14.1" "torchvision==0.29.1" && pip install . && \
    useradd --create-home --uid 1001 algorithm && mkdir -p /input /output && chown algorithm /output

ARG MODEL=model
COPY ${MODEL} /opt/model

USER algorithm
ENTRYPOINT ["histozoom", "challenge", "run", "--input", "/input", "--output", "/output", "--checkpoint", "/opt/model", "--no-progress"]
