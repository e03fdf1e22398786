"""The simulated GitHub Actions upstream: the world (world.py: repositories, workflows, runs and
the hourly budget), its REST endpoints (api.py) and the `workflow_run` webhook deliveries it
sends (hooks.py)."""

from __future__ import annotations

from worker.sources.github.simulator.api import GitHubEndpoints, created_bounds
from worker.sources.github.simulator.hooks import Delivery, signature_256, workflow_run_delivery
from worker.sources.github.simulator.world import (
    GITHUB_CONCLUSIONS,
    GITHUB_OPEN,
    GITHUB_STATUSES,
    GitHubWorld,
    RateBudget,
)

__all__ = [
    "GITHUB_CONCLUSIONS", "GITHUB_OPEN", "GITHUB_STATUSES", "Delivery", "GitHubEndpoints",
    "GitHubWorld", "RateBudget", "created_bounds", "signature_256", "workflow_run_delivery",
]  # fmt: skip
