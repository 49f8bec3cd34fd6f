"""Depth adapters and metrics (NYU Depth V2). Filled in by the depth job."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DepthOptions:
    profile: str = "fastdepth"
