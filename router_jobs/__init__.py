"""router-jobs: a job broker for LLM calls over a pool of rate-limited API keys."""

from .client import Router
from .errors import *  # noqa: F401,F403
from .models import ChatMessage, JobHandle, JobResult, JobSpec, JobStatus, Priority, Usage
from .settings import Settings

__all__ = [
    "ChatMessage", "Router", "JobHandle", "JobResult", "JobSpec", "JobStatus", "Priority", "Settings", "Usage",
]
__version__ = "0.1.0"
