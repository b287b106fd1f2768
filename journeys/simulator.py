"""A CRM simulator: the endpoints the CRM client calls, served over HTTP for demos and tests.

Contacts are deterministic: every well-formed UUID names an existing contact whose name, email,
phone and attributes derive from (seed, id), except UUIDs starting with `00000000-`, which do
not exist (404). Control routes can override a contact's fields or delete it. Changes (PATCH,
labels, messages, hooks) are kept in memory.

Idempotency: a mutating call carrying an `Idempotency-Key` that was already applied to the same
endpoint is answered with the stored answer and changes nothing. So the counters tell two
things apart: calls received per key (`/_control/counters`, the base's), and distinct effects
applied per key (`/_control/effects`): a re-sent call raises the first, never the second.

Faults: the base's 5xx rate, slow responses and malformed JSON, plus a 429 rate with a
`Retry-After` header (`POST /_control/throttle {"rate": 0.5, "retry_after": 1}`).
"""

from __future__ import annotations

import hashlib
import threading
import uuid
from collections import Counter, defaultdict
from copy import deepcopy
from datetime import UTC, datetime
from typing import Any

from devtools.simulator import (
    Faults,
    Handler,
    SimRequest,
    SimResponse,
    Simulator,
    SimulatorError,
)

MISSING_PREFIX = "00000000-"
_FIRST_NAMES = ("Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken")
_LAST_NAMES = ("Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Allen", "Thompson")
_EPOCH = datetime(2025, 1, 1, tzinfo=UTC)


class CrmSimulator(Simulator):
    def __init__(self, *, seed: int = 0, faults: Faults | None = None) -> None:
        super().__init__(faults=faults or Faults(seed=seed))
        self.seed = seed
        self.throttle_rate = 0.0
        self.retry_after_seconds = 1
        self._contacts: dict[str, dict[str, Any]] = {}
        self._deleted: set[str] = set()
        self._messages: list[dict[str, Any]] = []
        self._hooks: list[dict[str, Any]] = []
        self._replies: dict[tuple[str, str], SimResponse] = {}
        self._effects: Counter[str] = Counter()
        self._effect_keys: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self._effect_lock = threading.Lock()

        contact = r"/api/v1/contacts/(?P<contact_id>[^/]+)"
        self.add_route("GET", contact, "contacts.get", self._contact_get)
        self.add_route(
            "PATCH", contact, "contacts.patch", self._effect("contacts.patch", self._contact_patch)
        )
        self.add_route("GET", contact + "/labels", "contacts.labels", self._labels_get)
        self.add_route(
            "POST",
            contact + "/labels",
            "contacts.labels.add",
            self._effect("contacts.labels.add", self._labels_add),
        )
        self.add_route(
            "DELETE",
            contact + r"/labels/(?P<label>[^/]+)",
            "contacts.labels.remove",
            self._effect("contacts.labels.remove", self._labels_remove),
        )
        self.add_route(
            "POST",
            r"/api/v1/conversations/(?P<conversation_id>[^/]+)/messages",
            "conversations.messages.create",
            self._effect("conversations.messages.create", self._message_create),
        )
        self.add_route(
            "POST", r"/hooks/(?P<name>[^/]+)", "hooks", self._effect("hooks", self._hook)
        )
        self.add_route("GET", r"/_control/effects", "control.effects", self._effects_read)
        self.add_route("GET", r"/_control/messages", "control.messages", self._messages_read)
        self.add_route("GET", r"/_control/hooks", "control.hooks", self._hooks_read)
        self.add_route("POST", r"/_control/throttle", "control.throttle", self._throttle_update)
        self.add_route(
            "PUT", r"/_control/contacts/(?P<contact_id>[^/]+)", "control.contact", self._put
        )
        self.add_route(
            "DELETE", r"/_control/contacts/(?P<contact_id>[^/]+)", "control.contact", self._delete
        )

    # -- contacts -------------------------------------------------------------------------------

    def _hash(self, contact_id: str) -> int:
        return int.from_bytes(hashlib.sha256(f"{self.seed}:{contact_id}".encode()).digest()[:8])

    def generated_contact(self, contact_id: str) -> dict[str, Any]:
        """The contact the seed gives this id (before any change made through the API)."""
        number = self._hash(contact_id)
        first = _FIRST_NAMES[number % len(_FIRST_NAMES)]
        last = _LAST_NAMES[(number // 8) % len(_LAST_NAMES)]
        return {
            "id": contact_id,
            "name": f"{first} {last}",
            "email": f"{first.lower()}.{last.lower()}.{number % 10_000}@example.com",
            "phone_number": f"+3161{number % 10_000_000:07d}",
            "custom_attributes": {"plan": ("free", "pro", "team")[number % 3]},
            "additional_attributes": {"source": "crm-simulator"},
            "labels": [],
            "blocked": False,
            "updated_at": _EPOCH.isoformat(),
        }

    def contact(self, contact_id: str) -> dict[str, Any]:
        """The stored contact (created from the seed on first use); 404 when it does not exist."""
        try:
            normalised = str(uuid.UUID(contact_id))
        except ValueError:
            raise SimulatorError(
                404, {"error": "not_found", "message": "no such contact"}
            ) from None
        if normalised.startswith(MISSING_PREFIX) or normalised in self._deleted:
            raise SimulatorError(404, {"error": "not_found", "message": "no such contact"})
        with self.lock:
            if normalised not in self._contacts:
                self._contacts[normalised] = self.generated_contact(normalised)
            return self._contacts[normalised]

    def _contact_get(self, request: SimRequest) -> SimResponse:
        with self.lock:
            return SimResponse(200, deepcopy(self.contact(request.params["contact_id"])))

    def _contact_patch(self, request: SimRequest) -> SimResponse:
        changes = request.json()
        if not isinstance(changes, dict):
            raise SimulatorError(422, {"error": "invalid", "message": "expected a JSON object"})
        allowed = {"name", "email", "phone_number", "custom_attributes", "additional_attributes"}
        unknown = set(changes) - allowed
        if unknown:
            raise SimulatorError(422, {"error": "invalid", "message": f"unknown {sorted(unknown)}"})
        if "custom_attributes" in changes and not isinstance(changes["custom_attributes"], dict):
            raise SimulatorError(422, {"error": "invalid", "message": "custom_attributes"})
        with self.lock:
            contact = self.contact(request.params["contact_id"])
            # Like the real CRM: the maps sent replace the stored ones whole.
            contact.update(deepcopy(changes))
            contact["updated_at"] = datetime.now(UTC).isoformat()
            return SimResponse(200, deepcopy(contact))

    def _labels_get(self, request: SimRequest) -> SimResponse:
        with self.lock:
            return SimResponse(
                200, {"payload": list(self.contact(request.params["contact_id"])["labels"])}
            )

    def _labels_add(self, request: SimRequest) -> SimResponse:
        body = request.json()
        labels = body.get("labels") if isinstance(body, dict) else None
        if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
            raise SimulatorError(422, {"error": "invalid", "message": "labels: list of strings"})
        with self.lock:
            contact = self.contact(request.params["contact_id"])
            for label in labels:
                if label not in contact["labels"]:
                    contact["labels"].append(label)
            return SimResponse(200, {"payload": list(contact["labels"])})

    def _labels_remove(self, request: SimRequest) -> SimResponse:
        with self.lock:
            contact = self.contact(request.params["contact_id"])
            label = request.params["label"]
            contact["labels"] = [item for item in contact["labels"] if item != label]
            return SimResponse(200, {"payload": list(contact["labels"])})

    # -- messages and hooks ---------------------------------------------------------------------

    def _message_create(self, request: SimRequest) -> SimResponse:
        body = request.json()
        if not isinstance(body, dict) or not isinstance(body.get("content"), str):
            raise SimulatorError(422, {"error": "invalid", "message": "content is required"})
        with self.lock:
            message = {
                "id": len(self._messages) + 1,
                "conversation_id": request.params["conversation_id"],
                "content": body["content"],
                "message_type": body.get("message_type", "outgoing"),
                "idempotency_key": request.idempotency_key,
            }
            self._messages.append(message)
            return SimResponse(200, dict(message))

    def _hook(self, request: SimRequest) -> SimResponse:
        with self.lock:
            hook = {
                "id": len(self._hooks) + 1,
                "name": request.params["name"],
                "body": request.json(),
                "idempotency_key": request.idempotency_key,
            }
            self._hooks.append(hook)
            return SimResponse(200, {"ok": True, "id": hook["id"], "echo": hook["body"]})

    # -- idempotency and effects ----------------------------------------------------------------

    def _effect(self, endpoint: str, handler: Handler) -> Handler:
        """Wrap a mutating handler: throttling, then replay by idempotency key, then apply."""

        def wrapped(request: SimRequest) -> SimResponse:
            if self.faults.roll(self.throttle_rate):
                return SimResponse(
                    429,
                    {"error": "rate_limited", "message": "slow down"},
                    headers={"Retry-After": str(self.retry_after_seconds)},
                )
            key = request.idempotency_key
            with self._effect_lock:
                if key and (endpoint, key) in self._replies:
                    stored = self._replies[(endpoint, key)]
                    return SimResponse(
                        stored.status,
                        deepcopy(stored.body),
                        {**stored.headers, "Idempotent-Replayed": "true"},
                    )
                response = handler(request)
                if response.status < 400:
                    self._effects[endpoint] += 1
                    if key:
                        self._effect_keys[endpoint][key] += 1
                        self._replies[(endpoint, key)] = response
                return response

        return wrapped

    def effects(self) -> dict[str, Any]:
        with self._effect_lock:
            return {
                "effects": dict(self._effects),
                "idempotency_keys": {name: dict(keys) for name, keys in self._effect_keys.items()},
            }

    def messages(self) -> list[dict[str, Any]]:
        with self.lock:
            return [dict(message) for message in self._messages]

    # -- control routes -------------------------------------------------------------------------

    def _reset(self, request: SimRequest) -> SimResponse:
        with self._effect_lock, self.lock:
            self._effects.clear()
            self._effect_keys.clear()
            self._replies.clear()
            self._messages.clear()
            self._hooks.clear()
        return super()._reset(request)

    def _effects_read(self, request: SimRequest) -> SimResponse:
        return SimResponse(200, self.effects())

    def _messages_read(self, request: SimRequest) -> SimResponse:
        return SimResponse(200, {"messages": self.messages()})

    def _hooks_read(self, request: SimRequest) -> SimResponse:
        with self.lock:
            return SimResponse(200, {"hooks": [dict(hook) for hook in self._hooks]})

    def _throttle_update(self, request: SimRequest) -> SimResponse:
        values = request.json()
        if not isinstance(values, dict):
            raise SimulatorError(400, {"error": "expected a JSON object"})
        rate = values.get("rate", self.throttle_rate)
        retry_after = values.get("retry_after", self.retry_after_seconds)
        if not isinstance(rate, int | float) or not 0 <= rate <= 1:
            raise SimulatorError(400, {"error": "rate must be a number between 0 and 1"})
        if not isinstance(retry_after, int) or retry_after < 0:
            raise SimulatorError(400, {"error": "retry_after must be a non-negative integer"})
        self.throttle_rate, self.retry_after_seconds = float(rate), retry_after
        return SimResponse(200, {"rate": self.throttle_rate, "retry_after": retry_after})

    def _put(self, request: SimRequest) -> SimResponse:
        fields = request.json()
        if not isinstance(fields, dict):
            raise SimulatorError(400, {"error": "expected a JSON object"})
        with self.lock:
            contact_id = request.params["contact_id"]
            self._deleted.discard(contact_id)
            contact = self.contact(contact_id)
            contact.update(deepcopy(fields))
            return SimResponse(200, deepcopy(contact))

    def _delete(self, request: SimRequest) -> SimResponse:
        with self.lock:
            self._contacts.pop(request.params["contact_id"], None)
            self._deleted.add(request.params["contact_id"])
        return SimResponse(200, {"deleted": True})

    def fault_response(self, request: SimRequest) -> SimResponse:
        return SimResponse(503, {"error": "unavailable", "message": "injected fault"})
