"""Imported first by every flow module: telemetry off and quiet logs before Prefect/Ray load."""

from tasks.runtime import quiet_environment

quiet_environment()
