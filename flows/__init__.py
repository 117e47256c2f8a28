"""Prefect flows and deployments: wiring only; stage logic lives in tasks/ and runs through DVC."""
