"""Builders of Messenger webhook payloads in Meta's shape (docs/graph-api.md, "The webhook").

Pure functions without Django, shared by the Graph simulator (its signed webhook feed), the demo
loader, the tests and the webhook benchmark.
"""

from __future__ import annotations

from typing import Any

from conversations.signatures import meta_json_bytes, signature_for


def message_event(
    *,
    page_id: str,
    psid: str,
    mid: str,
    timestamp_ms: int,
    text: str = "",
    attachments: list[dict[str, Any]] | None = None,
    reply_to_mid: str | None = None,
    is_echo: bool = False,
    app_id: int | None = None,
) -> dict[str, Any]:
    message: dict[str, Any] = {"mid": mid}
    if text:
        message["text"] = text
    if attachments:
        message["attachments"] = attachments
    if reply_to_mid:
        message["reply_to"] = {"mid": reply_to_mid}
    if is_echo:
        message["is_echo"] = True
        message["app_id"] = app_id if app_id is not None else 1517
        message["metadata"] = "evoflow"
        sender, recipient = page_id, psid
    else:
        sender, recipient = psid, page_id
    return {
        "sender": {"id": sender},
        "recipient": {"id": recipient},
        "timestamp": timestamp_ms,
        "message": message,
    }


def delivery_event(
    *, page_id: str, psid: str, watermark_ms: int, mids: list[str] | None = None
) -> dict[str, Any]:
    delivery: dict[str, Any] = {"watermark": watermark_ms}
    if mids is not None:
        delivery["mids"] = mids
    return {
        "sender": {"id": psid},
        "recipient": {"id": page_id},
        "timestamp": watermark_ms + 50,
        "delivery": delivery,
    }


def read_event(*, page_id: str, psid: str, watermark_ms: int) -> dict[str, Any]:
    return {
        "sender": {"id": psid},
        "recipient": {"id": page_id},
        "timestamp": watermark_ms + 100,
        "read": {"watermark": watermark_ms},
    }


def reaction_event(
    *,
    page_id: str,
    psid: str,
    mid: str,
    timestamp_ms: int,
    action: str = "react",
    emoji: str = "\u2764",
) -> dict[str, Any]:
    reaction: dict[str, Any] = {"mid": mid, "action": action}
    if action == "react":
        reaction.update(reaction="love", emoji=emoji)
    return {
        "sender": {"id": psid},
        "recipient": {"id": page_id},
        "timestamp": timestamp_ms,
        "reaction": reaction,
    }


def edit_event(
    *, page_id: str, psid: str, mid: str, timestamp_ms: int, text: str, num_edit: int
) -> dict[str, Any]:
    """A `message_edits` event: the message's text after its `num_edit`-th edit."""
    return {
        "sender": {"id": psid},
        "recipient": {"id": page_id},
        "timestamp": timestamp_ms,
        "message_edit": {"mid": mid, "text": text, "num_edit": num_edit},
    }


def named_reaction_event(
    *,
    page_id: str,
    psid: str,
    mid: str,
    timestamp_ms: int,
    action: str,
    reaction: str,
    emoji: str,
) -> dict[str, Any]:
    """A `message_reactions` event naming its reaction, as Meta's reference shows for both
    actions."""
    return {
        "sender": {"id": psid},
        "recipient": {"id": page_id},
        "timestamp": timestamp_ms,
        "reaction": {"reaction": reaction, "emoji": emoji, "action": action, "mid": mid},
    }


def postback_event(
    *,
    page_id: str,
    psid: str,
    timestamp_ms: int,
    payload: str,
    title: str = "Get started",
    mid: str | None = None,
) -> dict[str, Any]:
    postback: dict[str, Any] = {"title": title, "payload": payload}
    if mid:
        postback["mid"] = mid
    return {
        "sender": {"id": psid},
        "recipient": {"id": page_id},
        "timestamp": timestamp_ms,
        "postback": postback,
    }


def webhook_document(
    page_id: str,
    events: list[dict[str, Any]],
    *,
    standby: list[dict[str, Any]] | None = None,
    time_ms: int | None = None,
) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "id": page_id,
        "time": time_ms
        if time_ms is not None
        else max([event["timestamp"] for event in events + (standby or [])] or [0]),
        "messaging": events,
    }
    if standby:
        entry["standby"] = standby
    return {"object": "page", "entry": [entry]}


def signed_body(document: dict[str, Any], *, secret: str) -> tuple[bytes, dict[str, str]]:
    """Meta-serialised bytes of `document` and the headers Meta would send with them."""
    body = meta_json_bytes(document)
    return body, {
        "Content-Type": "application/json",
        "X-Hub-Signature-256": signature_for(body, secret=secret),
    }
