# repopilot's completion API (the `copilot_proxy` service of the FauxPilot stack): `repopilot serve`
# with the Triton engine. No torch: it only tokenizes and talks gRPC to Triton.
# Build from the project root:  docker build -f packaging/docker/api.Dockerfile -t repopilot/api .
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}
COPY packaging/docker/ /tmp/ctx/
# A corporate proxy's CA, when the build machine has one (packaging/docker/extra-ca.crt, not committed).
RUN if [ -f /tmp/ctx/extra-ca.crt ]; then cat /tmp/ctx/extra-ca.crt >> /etc/ssl/certs/ca-certificates.crt; fi
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python3 -m venv /opt/repopilot && /opt/repopilot/bin/pip install -q --upgrade pip setuptools
COPY pyproject.toml README.md /src/
COPY agent /src/agent
COPY pipelines /src/pipelines
COPY ui /src/ui
RUN /opt/repopilot/bin/pip install -q "/src[serve]"
ENV PATH=/opt/repopilot/bin:$PATH HF_HUB_OFFLINE=1 GIT_PYTHON_REFRESH=quiet
EXPOSE 5000
CMD ["repopilot", "serve", "--help"]
