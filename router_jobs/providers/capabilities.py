"""What each provider can do with the neutral request, checked at submit.

A job names models; the pool knows which providers serve each. Before anything is enqueued,
:func:`check_spec` walks the job against every provider that could run it (the preferred
model's and every fallback's) and raises :class:`~router_jobs.errors.JobValidationError`
naming the first field some provider cannot honour. Nothing is ever dropped silently.

The table (``yes`` = mapped to the provider's own feature, ``-`` = refused at submit)::

    feature                    openai                 anthropic                 gemini
    images (url / base64)      image_url              image source url/base64   fileData / inlineData
      gs:// url                -                      -                         fileData
      url without media_type   yes                    yes                       - (fileData needs it)
      detail low/high          detail                 -                         -
    provider parts             own only               own only                  own only
    tools, tool results        tools / tool msgs      tool_use / tool_result    functionCall/Response
    tool_choice                auto/none/required/fn  auto/none/any/tool        AUTO/NONE/ANY(+names)
    parallel_tool_calls=False  yes                    disable_parallel_tool_use -
    tool result is_error       "[tool error] " prefix is_error                  {"error": ...}
    images in tool results     -                      yes                       -
    response_format json       json_object/json_schema output_config.format     responseMimeType/JsonSchema
    reasoning effort           reasoning_effort       output_config.effort      thinkingLevel (2.x: budget)
      effort "minimal"         yes                    -                         yes
    reasoning budget_tokens    -                      thinking.budget_tokens    thinkingBudget
      (anthropic: 1024 <= budget < max_output_tokens; no forced tool_choice, no temperature)
    seed                       seed                   -                         seed
    cache_control hints        automatic caching      cache_control blocks      implicit caching

``openai-compatible`` endpoints are checked as ``openai``; the in-process ``fake`` provider
takes everything.

Conversation history is not part of the job, so it is checked by the adapters when the turn
runs (a part a provider cannot take fails the job as ``bad_request``, naming it); a
:class:`~router_jobs.request.ProviderPart` of another provider in the history is left out of
that provider's request by design (it is that provider's opaque state).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from router_jobs.errors import JobValidationError
from router_jobs.models import ChatMessage, JobSpec
from router_jobs.request import ImagePart, NamedToolChoice, ProviderPart, Reasoning

#: Anthropic's smallest thinking budget.
ANTHROPIC_MIN_THINKING = 1024


def family(provider: str) -> str:
    """The wire family of a provider name (``openai-compatible`` speaks ``openai``)."""
    return "openai" if provider == "openai-compatible" else provider


def check_messages(messages: Iterable[ChatMessage], provider: str, *, prefix: str = "messages",
                   offset: int = 0) -> None:
    """Refuse message parts ``provider`` cannot take (field named like ``messages[1].content[0]``)."""
    fam = family(provider)
    if fam == "fake":
        return
    for i, msg in enumerate(messages, start=offset):
        if isinstance(msg.content, str):
            continue
        if msg.role == "tool" and fam in ("openai", "gemini") and any(isinstance(p, ImagePart) for p in msg.content):
            raise JobValidationError(f"{prefix}[{i}].content", f"{provider} takes text only in tool results")
        for j, part in enumerate(msg.content):
            where = f"{prefix}[{i}].content[{j}]"
            if isinstance(part, ProviderPart) and part.provider != fam:
                raise JobValidationError(where, f"a {part.provider} part cannot go to {provider}")
            if isinstance(part, ImagePart):
                _check_image(part, provider, fam, where)


def _check_image(part: ImagePart, provider: str, fam: str, where: str) -> None:
    if part.url is not None and part.url.startswith("gs://") and fam != "gemini":
        raise JobValidationError(where + ".url", f"{provider} cannot read gs:// URLs")
    if part.url is not None and fam == "gemini" and part.media_type is None:
        raise JobValidationError(where + ".media_type", "gemini needs the media type of an image given by URL")
    if part.detail not in (None, "auto") and fam != "openai":
        raise JobValidationError(where + ".detail", f"{provider} has no image detail setting")


def _check_reasoning(r: Reasoning, spec: JobSpec, provider: str, fam: str) -> None:
    if fam == "openai" and r.budget_tokens is not None:
        raise JobValidationError("reasoning.budget_tokens", f"{provider} takes a reasoning effort, not a budget")
    if fam == "gemini" and r.budget_tokens is not None and r.effort is not None:
        raise JobValidationError("reasoning", "gemini takes an effort or a budget_tokens, not both")
    if fam != "anthropic":
        return
    if r.effort == "minimal":
        raise JobValidationError("reasoning.effort", "anthropic has no 'minimal' effort (low, medium, high)")
    if r.budget_tokens is not None:
        if r.budget_tokens < ANTHROPIC_MIN_THINKING:
            raise JobValidationError("reasoning.budget_tokens", f"anthropic needs at least {ANTHROPIC_MIN_THINKING}")
        if r.budget_tokens >= spec.max_output_tokens:
            raise JobValidationError("reasoning.budget_tokens", "anthropic needs it below max_output_tokens")
        if spec.tool_choice in ("required",) or isinstance(spec.tool_choice, NamedToolChoice):
            raise JobValidationError("tool_choice", "anthropic cannot force a tool call while thinking")
        if spec.temperature is not None or spec.top_p is not None:
            field = "temperature" if spec.temperature is not None else "top_p"
            raise JobValidationError(field, "anthropic does not take sampling settings while thinking")


def check_provider(spec: JobSpec, provider: str) -> None:
    """Raise JobValidationError when ``provider`` cannot run ``spec`` as asked."""
    fam = family(provider)
    if fam == "fake":
        return
    if spec.messages is not None:
        check_messages(spec.messages, provider)
    if spec.seed is not None and fam == "anthropic":
        raise JobValidationError("seed", "anthropic does not take a seed")
    if spec.parallel_tool_calls is False and fam == "gemini":
        raise JobValidationError("parallel_tool_calls", "gemini cannot be kept from calling tools in parallel")
    if spec.reasoning is not None:
        _check_reasoning(spec.reasoning, spec, provider, fam)


def check_spec(spec: JobSpec, providers_by_model: Mapping[str, Iterable[str]]) -> None:
    """Check ``spec`` against every provider that serves one of its models."""
    for model in spec.models():
        for provider in sorted(set(providers_by_model.get(model, ()))):
            try:
                check_provider(spec, provider)
            except JobValidationError as exc:
                raise JobValidationError(exc.field, f"{exc.reason} (model {model!r} is served by {provider})") from None
