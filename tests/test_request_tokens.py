"""Token estimates count images (by their real size when inline) and tool schemas, erring high."""

from __future__ import annotations

import base64
import struct

import pytest

from router_jobs.images import image_size
from router_jobs.models import ChatMessage
from router_jobs.request import ImagePart, ResponseFormat, TextPart, Tool, ToolCall
from router_jobs.tokens import (
    ANTHROPIC_TOOLS_PROMPT,
    IMAGE_UNKNOWN,
    estimate_extra_tokens,
    estimate_tokens,
    image_tokens,
)


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def png(w: int, h: int) -> str:
    return b64(b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + struct.pack(">II", w, h) + b"\x08\x02\0\0\0")


def gif(w: int, h: int) -> str:
    return b64(b"GIF89a" + struct.pack("<HH", w, h) + b"\0" * 8)


def jpeg(w: int, h: int) -> str:
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\0\x01\x01\0\0\x01\0\x01\0\0"
    sof0 = b"\xff\xc0" + struct.pack(">HBHH", 17, 8, h, w) + b"\x03" + b"\0" * 9
    return b64(b"\xff\xd8" + app0 + sof0 + b"\xff\xd9")


def webp(w: int, h: int) -> str:
    body = b"WEBP" + b"VP8X" + struct.pack("<I", 10) + b"\0\0\0\0" + (w - 1).to_bytes(3, "little") + \
        (h - 1).to_bytes(3, "little")
    return b64(b"RIFF" + struct.pack("<I", len(body)) + body)


@pytest.mark.parametrize("make", [png, gif, jpeg, webp])
def test_image_sizes_are_read_from_the_header(make) -> None:  # type: ignore[no-untyped-def]
    assert image_size(make(1024, 700)) == (1024, 700)


def test_unreadable_images_have_no_size() -> None:
    assert image_size(b64(b"not an image at all")) is None
    assert image_size("%%%") is None


def test_each_provider_charges_an_image_by_its_own_rule() -> None:
    img = ImagePart(data=png(1024, 1024), media_type="image/png")
    assert image_tokens(img, "gpt-4o") == 85 + 170 * 4  # scaled to 768x768: 2x2 tiles
    assert image_tokens(img, "claude-sonnet-4") == 1399  # 1024*1024/750
    assert image_tokens(img, "gemini-2.5-flash") == 258 * 4  # 2x2 tiles of 768
    small = ImagePart(data=png(300, 200), media_type="image/png")
    assert image_tokens(small, "gemini-2.5-flash") == 258
    assert image_tokens(ImagePart(url="https://x.test/a.png", detail="low"), "gpt-4o") == 85
    huge = ImagePart(data=png(8000, 8000), media_type="image/png")
    assert image_tokens(huge, "claude-3-haiku") <= 1600  # scaled down to the provider's maximum


def test_an_image_of_unknown_size_costs_more_than_any_provider_charges_for_one() -> None:
    url = ImagePart(url="https://x.test/a.png")
    for model in ("gpt-4o", "claude-sonnet-4", "gemini-2.5-pro"):
        assert image_tokens(url, model) == IMAGE_UNKNOWN
    biggest_known = max(image_tokens(ImagePart(data=png(w, h), media_type="image/png"), m)
                        for w, h in [(768, 2048), (1568, 735), (1092, 1092)] for m in ("gpt-4o", "claude-x"))
    assert IMAGE_UNKNOWN >= biggest_known


def test_messages_count_their_images_and_tool_calls() -> None:
    text_only = [ChatMessage(role="user", content="describe this")]
    with_image = [ChatMessage(role="user", content=[TextPart(text="describe this"),
                                                    ImagePart(data=png(1024, 1024), media_type="image/png")])]
    assert estimate_tokens(with_image, "gpt-4o") == estimate_tokens(text_only, "gpt-4o") + 765
    call = ChatMessage(role="assistant", tool_calls=[ToolCall(id="c", name="lookup", arguments='{"q": "a long query"}')])
    assert estimate_tokens([*text_only, call], "gpt-4o") > estimate_tokens([*text_only,
                                                                            ChatMessage(role="assistant")], "gpt-4o")


def test_tool_schemas_and_answer_schemas_count() -> None:
    tool = Tool(name="get_weather", description="Weather now in a city",
                parameters={"type": "object", "properties": {"city": {"type": "string"}}})
    openai = estimate_extra_tokens([tool], None, "gpt-4o")
    assert openai > 16
    assert estimate_extra_tokens([tool, tool.model_copy(update={"name": "other"})], None, "gpt-4o") > openai
    assert estimate_extra_tokens([tool], None, "claude-sonnet-4") >= openai + ANTHROPIC_TOOLS_PROMPT
    assert estimate_extra_tokens(None, None, "gpt-4o") == 0
    schema = ResponseFormat(type="json_schema", json_schema={"type": "object", "properties": {"a": {"type": "string"}}})
    assert estimate_extra_tokens(None, schema, "gpt-4o") > 0
