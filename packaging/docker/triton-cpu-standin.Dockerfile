# CPU STAND-IN for FauxPilot's Triton + FasterTransformer image (which needs an NVIDIA GPU of SM 6.0-8.6).
# A real tritonserver (nvidia-pytriton, Python backend) serving the `fastertransformer` model interface,
# computed by repopilot's NumPy reference forward pass over the converted FT files. For tests and
# GPU-less machines only; with a GPU use triton.Dockerfile.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}
COPY packaging/docker/ /tmp/ctx/
RUN if [ -f /tmp/ctx/extra-ca.crt ]; then cat /tmp/ctx/extra-ca.crt >> /etc/ssl/certs/ca-certificates.crt; fi
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python3 -m venv /opt/standin && /opt/standin/bin/pip install -q nvidia-pytriton "numpy<2"
COPY pipelines /src/pipelines
COPY packaging/triton-standin/standin.py /opt/standin/standin.py
RUN mkdir -p /opt/tritonserver/bin && printf '%s\n' '#!/bin/sh' \
      'LIBDIR=$(/opt/standin/bin/python -c "import sysconfig; print(sysconfig.get_config_var(\"LIBDIR\"))")' \
      'export LD_LIBRARY_PATH="$LIBDIR:$LD_LIBRARY_PATH" PYTHONPATH=/src PYTRITON_HOME=/tmp/pytriton' \
      'exec /opt/standin/bin/python /opt/standin/standin.py "$@"' > /opt/tritonserver/bin/tritonserver \
    && chmod +x /opt/tritonserver/bin/tritonserver
CMD ["/opt/tritonserver/bin/tritonserver", "--model-repository=/model"]
