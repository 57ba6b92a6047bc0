"""router-jobs: a job broker for LLM calls over a pool of rate-limited API keys."""

from router_jobs.capacity.config import KeyConfig
from router_jobs.client.router import Router
from router_jobs.errors import *  # noqa: F401,F403
from router_jobs.models import ChatMessage, JobHandle, JobResult, JobSpec, JobStatus, Priority, Usage
from router_jobs.seed import (
    KeyManager,
    get_conversation_store,
    get_key_manager,
    get_redis_limiter,
    get_request_router,
)
from router_jobs.settings import Settings

#: the seed's name for a key's metadata
APIKey = KeyConfig

__all__ = [
    "APIKey", "ChatMessage", "JobHandle", "JobResult", "JobSpec", "JobStatus", "KeyConfig", "KeyManager",
    "Priority", "Router", "Settings", "Usage", "get_conversation_store", "get_key_manager",
    "get_redis_limiter", "get_request_router",
]
__version__ = "0.1.0"
