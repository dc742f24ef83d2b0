# The real Triton + FasterTransformer server for NVIDIA GPUs (SM 6.0-8.6): FauxPilot's image.
# On a machine with a GPU and network:
#   docker build -f packaging/docker/triton.Dockerfile -t repopilot/triton-ft:22.09 .
FROM moyix/triton_with_ft:22.09
