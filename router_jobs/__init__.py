"""router-jobs: a job broker for LLM calls over a pool of rate-limited API keys."""

from .client import Router
from .compat import KeyManager, get_conversation_store, get_key_manager, get_redis_limiter, get_request_router
from .keys import KeyConfig

#: the seed's name for a key's metadata
APIKey = KeyConfig
from .errors import *  # noqa: F401,F403
from .models import ChatMessage, JobHandle, JobResult, JobSpec, JobStatus, Priority, Usage
from .settings import Settings

__all__ = [
    "APIKey", "ChatMessage", "KeyConfig", "KeyManager", "get_redis_limiter", "Router", "get_conversation_store", "get_key_manager", "get_request_router", "JobHandle", "JobResult", "JobSpec", "JobStatus", "Priority", "Settings", "Usage",
]
__version__ = "0.1.0"
