"""The client of the external CRM (`CRM_BASE_URL`), where contacts really live.

Built on `evoflow.http.HttpClient`: timeouts, retries on 5xx/429 (honouring Retry-After), the
request id, idempotency keys. A 404 means "no such contact" (None), not an error. The CRM's
PATCH replaces the whole `custom_attributes` map, so `contact_custom_attributes_merge` reads,
merges, then writes.
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import lru_cache
from typing import Any
from urllib.parse import quote

from django.conf import settings
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from evoflow.http import HttpClient, HttpClientError, RetryPolicy


class CrmError(HttpClientError):
    """The CRM answered with something other than what the call expects."""


class CrmContact(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str
    name: str | None = None
    email: str | None = None
    phone_number: str | None = None
    custom_attributes: dict[str, Any] = Field(default_factory=dict)
    additional_attributes: dict[str, Any] = Field(default_factory=dict)
    labels: list[str] = Field(default_factory=list)
    blocked: bool = False
    updated_at: datetime | None = None

    @field_validator("updated_at")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        # A timestamp without an offset is taken as UTC: the local rows' are aware, and
        # comparing the two would otherwise raise.
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class CrmClient(HttpClient):
    service = "crm"

    def __init__(self, base_url: str, *, token: str = "", **kwargs: Any) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        super().__init__(base_url, headers=headers, **kwargs)

    def _json(self, response: Any, what: str) -> Any:
        if response.status_code >= 400:
            raise CrmError(f"crm {what}: HTTP {response.status_code}", response=response)
        try:
            return response.json()
        except ValueError as error:
            raise CrmError(f"crm {what}: the answer is not JSON", response=response) from error

    def _contact(self, payload: Any, what: str) -> CrmContact:
        try:
            return CrmContact.model_validate(payload)
        except ValidationError as error:
            raise CrmError(f"crm {what}: unexpected contact shape: {error}") from error

    @staticmethod
    def _labels(payload: Any, what: str) -> list[str]:
        """The labels of a label answer, `{"payload": ["vip", ...]}`; any other shape is a
        CrmError, like a body that is not JSON."""
        labels = payload.get("payload", []) if isinstance(payload, dict) else None
        if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
            raise CrmError(f"crm {what}: unexpected labels shape")
        return labels

    @staticmethod
    def _contact_path(contact_id: str) -> str:
        return f"api/v1/contacts/{quote(str(contact_id), safe='')}"

    def contact_get(self, contact_id: str) -> CrmContact | None:
        response = self.request("GET", self._contact_path(contact_id))
        if response.status_code == 404:
            return None
        return self._contact(self._json(response, "contact get"), "contact get")

    def contact_patch(
        self, contact_id: str, changes: dict[str, Any], *, idempotency_key: str | None = None
    ) -> CrmContact | None:
        response = self.request(
            "PATCH", self._contact_path(contact_id), json=changes, idempotency_key=idempotency_key
        )
        if response.status_code == 404:
            return None
        return self._contact(self._json(response, "contact patch"), "contact patch")

    def contact_custom_attributes_merge(
        self, contact_id: str, attributes: dict[str, Any], *, idempotency_key: str | None = None
    ) -> CrmContact | None:
        """Read, merge, write: the CRM's PATCH would drop every attribute not sent."""
        current = self.contact_get(contact_id)
        if current is None:
            return None
        merged = {**current.custom_attributes, **attributes}
        return self.contact_patch(
            contact_id, {"custom_attributes": merged}, idempotency_key=idempotency_key
        )

    def contact_label_add(
        self, contact_id: str, label: str, *, idempotency_key: str | None = None
    ) -> list[str] | None:
        response = self.request(
            "POST",
            f"{self._contact_path(contact_id)}/labels",
            json={"labels": [label]},
            idempotency_key=idempotency_key,
        )
        if response.status_code == 404:
            return None
        return self._labels(self._json(response, "label add"), "label add")

    def contact_label_remove(
        self, contact_id: str, label: str, *, idempotency_key: str | None = None
    ) -> list[str] | None:
        response = self.request(
            "DELETE",
            f"{self._contact_path(contact_id)}/labels/{quote(label, safe='')}",
            idempotency_key=idempotency_key,
        )
        if response.status_code == 404:
            return None
        return self._labels(self._json(response, "label remove"), "label remove")

    def conversation_message_send(
        self,
        conversation_id: str,
        *,
        content: str,
        message_type: str = "outgoing",
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        response = self.request(
            "POST",
            f"api/v1/conversations/{quote(str(conversation_id), safe='')}/messages",
            json={"content": content, "message_type": message_type},
            idempotency_key=idempotency_key,
        )
        body = self._json(response, "message send")
        if not isinstance(body, dict):
            raise CrmError("crm message send: expected a JSON object", response=response)
        return body


@lru_cache(maxsize=4)
def _client_for(base_url: str, token: str, attempts: int) -> CrmClient:
    return CrmClient(
        base_url,
        token=token,
        timeout=(3.05, 10.0),
        retry=RetryPolicy(max_attempts=attempts, retry_after_max=10.0),
    )


def crm_client() -> CrmClient:
    """The process's CRM client (one pooled session per base URL and token)."""
    return _client_for(
        settings.CRM_BASE_URL, settings.CRM_API_TOKEN, int(getattr(settings, "CRM_ATTEMPTS", 3))
    )
