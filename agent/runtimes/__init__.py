"""The completion stack: FauxPilot's docker-compose project (Triton + API), or the embedded runtime."""
