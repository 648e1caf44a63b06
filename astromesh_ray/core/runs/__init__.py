"""Runs that outlive one request: a run paused on client tools or approvals is
saved (``PausedRun``) in a ``PausedRunStore`` next to the conversation store, and
resumed from there by whichever replica gets the caller's answer."""

from astromesh_ray.core.runs.paused import PausedRun, PausedRunStore, ToolDecision

__all__ = ["PausedRun", "PausedRunStore", "ToolDecision"]
