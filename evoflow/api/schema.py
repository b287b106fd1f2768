"""What the OpenAPI schema adds to what drf-spectacular reads from the views: the one `Error`
component and the error statuses every operation can answer (docs/api.md).

Views declare their successes and the errors only they give (a 409 with its codes, a 404 of a
path without an id); this hook adds the errors that follow from how every request is handled,
so they are documented the same way everywhere and a new view cannot forget them:

- 400 wherever the request has query parameters or a body (validation, `invalid_cursor`,
  `invalid_page_size`), and 415 wherever it has a body;
- 401 and 403 wherever authentication is required (every operation not open to anyone);
- 404 wherever the path names an object;
- 429 everywhere (throttling; `Retry-After` says how long to wait);
- 503 everywhere (`database_unavailable`: the database cannot be reached).

Any error response declared without content gets the `Error` schema.

Request bodies (components ending in `Request`) are closed, `additionalProperties: false`, as
the server refuses fields it does not take; a text that must not be blank says so with the
pattern `\\S` (DRF trims spaces before checking, so " " is blank).
"""

from __future__ import annotations

from typing import Any

ERROR_COMPONENT = "Error"
ERROR_REF = {"$ref": f"#/components/schemas/{ERROR_COMPONENT}"}

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": (
        "Every error of the API. `code` is stable (clients branch on it), `detail` is for "
        "people and may be reworded. Some codes add fields of their own, named in the "
        "operation's description (for example `sync_run_id` with `sync_running`)."
    ),
    "properties": {
        "code": {
            "type": "string",
            "description": "stable, machine-readable",
            "example": "not_found",
        },
        "detail": {"type": "string", "description": "for people", "example": "Not found."},
        "errors": {
            "description": (
                "`validation_error`: an object of field name to messages. "
                "`invalid_guest_rows`: a list of `{index, field, reason}`."
            ),
            "nullable": True,
        },
    },
    "required": ["code", "detail"],
    "additionalProperties": True,
}

# Descriptions of the generic statuses: what they mean and which codes they carry.
GENERIC_ERRORS: dict[str, str] = {
    "400": (
        "The request is invalid: `validation_error` (with `errors`), `invalid_cursor`, "
        "`invalid_page_size`, or a code of the operation."
    ),
    "401": "`not_authenticated` (no credentials) or `authentication_failed` (a bad token).",
    "403": "`permission_denied`: the account lacks the permission this operation needs.",
    "404": "`not_found` (or a code of the operation): no such object visible to this account.",
    "415": "`unsupported_media_type`: send `application/json`.",
    "429": (
        "`throttled` (or `too_many_streams`): too many requests; retry after `Retry-After` seconds."
    ),
    "503": "`database_unavailable`: the database cannot be reached; retry later.",
}

RETRY_AFTER_HEADER: dict[str, Any] = {
    "description": "seconds to wait before retrying",
    "schema": {"type": "integer", "minimum": 0},
}

_METHODS = ("get", "put", "post", "patch", "delete")


def _error_content() -> dict[str, Any]:
    return {"application/json": {"schema": dict(ERROR_REF)}}


def _is_public(operation: dict[str, Any]) -> bool:
    # drf-spectacular marks an operation open to anonymous requests with an empty requirement.
    return {} in operation.get("security", [])


def _generic_statuses(path: str, operation: dict[str, Any]) -> list[str]:
    parameters = operation.get("parameters", [])
    has_body = "requestBody" in operation
    statuses = []
    if has_body or any(parameter.get("in") == "query" for parameter in parameters):
        statuses.append("400")
    if not _is_public(operation):
        statuses += ["401", "403"]
    if "{" in path:
        statuses.append("404")
    if has_body:
        statuses.append("415")
    statuses += ["429", "503"]
    return statuses


def _request_component_close(component: dict[str, Any]) -> None:
    component["additionalProperties"] = False
    for field in component.get("properties", {}).values():
        if (
            field.get("type") == "string"
            and field.get("minLength", 0) >= 1
            and not {"enum", "format", "pattern"} & set(field)
        ):
            field["pattern"] = r"\S"


def error_responses_document(
    result: dict[str, Any], generator: Any, request: Any, public: bool
) -> dict[str, Any]:
    """The postprocessing hook (SPECTACULAR_SETTINGS): the Error component, and the generic
    error statuses on every operation (module docstring)."""
    components = result.setdefault("components", {}).setdefault("schemas", {})
    components[ERROR_COMPONENT] = ERROR_SCHEMA
    for name, component in components.items():
        if name.endswith("Request") and component.get("type") == "object":
            _request_component_close(component)
    for path, operations in result.get("paths", {}).items():
        for method, operation in operations.items():
            if method not in _METHODS:
                continue
            responses = operation.setdefault("responses", {})
            for status in _generic_statuses(path, operation):
                responses.setdefault(status, {"description": GENERIC_ERRORS[status]})
            for status, response in responses.items():
                if status[0] in "45" and not response.get("content"):
                    response["content"] = _error_content()
                if status == "429":
                    response.setdefault("headers", {})["Retry-After"] = RETRY_AFTER_HEADER
    return result
