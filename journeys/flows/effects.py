"""Nodes with side effects: CRM messages, contact updates, labels and HTTP requests.

Each call carries the step's idempotency key, so a step re-run after a crash repeats the call
under the same key and the receiver can recognise it. Called outside any transaction.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests

from evoflow.http import (
    HttpClient,
    HttpClientError,
    RetryPolicy,
    UpstreamUnavailable,
    redact_url,
)
from journeys.crm import CrmError, crm_client
from journeys.flows.flow import (
    HttpRequestConfig,
    LabelConfig,
    Node,
    SendMessageConfig,
    UpdateContactConfig,
    http_url_refusal,
)
from journeys.flows.nodes import NodeState, Outcome, render


class EffectFailed(Exception):
    """The node's call failed; `is_retryable` says whether another attempt may succeed."""

    def __init__(self, message: str, *, is_retryable: bool) -> None:
        super().__init__(message)
        self.is_retryable = is_retryable


def _failure(error: HttpClientError, *, message: str | None = None) -> EffectFailed:
    message = str(error) if message is None else message
    if isinstance(error, UpstreamUnavailable):
        return EffectFailed(message, is_retryable=True)
    status = error.response.status_code if error.response is not None else None
    return EffectFailed(message, is_retryable=status is None or status >= 500 or status == 429)


@lru_cache(maxsize=16)
def _http_client(timeout_seconds: float) -> HttpClient:
    # One attempt per step run: the node's own retry policy spaces further attempts out
    # without holding a worker.
    client = HttpClient(
        "http://localhost/",
        timeout=(min(3.05, timeout_seconds), timeout_seconds),
        retry=RetryPolicy(max_attempts=1),
    )
    # Redirects are not followed: the allow-list vetted the URL the flow names, and a redirect
    # would lead past it. A 3xx answer fails the node instead.
    client.session.get_redirect_target = _no_redirect  # type: ignore[method-assign,assignment]
    return client


def _no_redirect(response: requests.Response) -> str | None:
    return None


def _dig(payload: Any, path: str) -> Any:
    for part in path.split(".") if path else []:
        if isinstance(payload, dict):
            payload = payload.get(part)
        elif isinstance(payload, list) and part.isdigit() and int(part) < len(payload):
            payload = payload[int(part)]
        else:
            return None
    return payload


def effect_run(node: Node, state: NodeState, *, idempotency_key: str) -> Outcome:
    config = node.config
    crm = crm_client()
    try:
        if isinstance(config, SendMessageConfig):
            message = crm.conversation_message_send(
                str(render(config.conversation_id, state)),
                content=str(render(config.content, state)),
                message_type=config.message_type,
                idempotency_key=idempotency_key,
            )
            return Outcome(result={"message_id": message.get("id")})
        if isinstance(config, UpdateContactConfig):
            attributes = render(config.custom_attributes, state)
            updated = crm.contact_custom_attributes_merge(
                state.contact_id, attributes, idempotency_key=idempotency_key
            )
            if updated is None:
                raise EffectFailed("the contact does not exist in the CRM", is_retryable=False)
            return Outcome(
                result={"custom_attributes": updated.custom_attributes},
                contact_changes={"custom_attributes": updated.custom_attributes},
            )
        if isinstance(config, LabelConfig):
            label = str(render(config.label, state))
            if node.type == "add_label":
                labels = crm.contact_label_add(
                    state.contact_id, label, idempotency_key=idempotency_key
                )
            else:
                labels = crm.contact_label_remove(
                    state.contact_id, label, idempotency_key=idempotency_key
                )
            if labels is None:
                raise EffectFailed("the contact does not exist in the CRM", is_retryable=False)
            return Outcome(result={"labels": labels}, contact_changes={"labels": labels})
        if isinstance(config, HttpRequestConfig):
            return _http_request(config, state, idempotency_key=idempotency_key)
    except CrmError as error:
        raise _failure(error) from error
    except HttpClientError as error:
        raise _failure(error) from error
    except (requests.RequestException, ValueError, UnicodeError) as error:
        # The request could not be built or sent (a header with a newline or characters
        # outside Latin-1, a body JSON cannot carry): another attempt would fail alike. Only
        # the type is kept: the message may quote a header value, which may be a secret.
        raise EffectFailed(
            f"the request could not be sent ({type(error).__name__})", is_retryable=False
        ) from error
    raise ValueError(f'node "{node.id}" ({node.type}) has no side effect')


def _without_query(url: str) -> str:
    """The URL for messages that are stored and shown: its query may carry a token."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(query="***")) if parts.query else url


def _http_request(config: HttpRequestConfig, state: NodeState, *, idempotency_key: str) -> Outcome:
    url = str(render(config.url, state))
    shown_url = _without_query(url)
    # Checked again on every run: the URL may be a template, and the setting may have been
    # narrowed since the flow was saved. Nothing is sent to a refused URL.
    refusal = http_url_refusal(url)
    if refusal:
        raise EffectFailed(f"{refusal}; no request was sent", is_retryable=False)
    body = render(config.body, state) if config.body is not None else None
    headers = {name: str(render(value, state)) for name, value in config.headers.items()}
    try:
        response = _http_client(config.timeout_seconds).request(
            config.method, url, json=body, headers=headers, idempotency_key=idempotency_key
        )
    except HttpClientError as error:
        message = str(error).replace(redact_url(url), shown_url)
        raise _failure(error, message=message) from error
    if 300 <= response.status_code < 400:
        raise EffectFailed(
            f"{config.method} {shown_url} answered HTTP {response.status_code} "
            "(redirects are not followed)",
            is_retryable=False,
        )
    if response.status_code >= 400:
        raise EffectFailed(
            f"{config.method} {shown_url} answered HTTP {response.status_code}",
            is_retryable=response.status_code >= 500 or response.status_code == 429,
        )
    try:
        payload = response.json() if response.content else None
    except ValueError:
        payload = None
    variables = {name: _dig(payload, path) for name, path in config.response_mapping.items()}
    return Outcome(
        variables=variables, result={"status": response.status_code, "mapped": variables}
    )
