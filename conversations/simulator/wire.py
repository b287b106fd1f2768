"""What the Graph simulator's answers look like on the wire, apart from the data they carry.

Graph's error bodies (a wrong token, an unknown object, throttling, a server fault), its paging
cursors, its query parameters (`limit`, `fields`, `folder`), its usage headers and the drifted
shapes the simulator serves to test a client's strictness. `graph.py` serves the edges with
these; the functions here hold no state.
"""

from __future__ import annotations

import base64
import json
import math
import random
import time
from typing import Any

from conversations.simulator.fields import FieldsInvalid, FieldSpec, fields_parse
from conversations.simulator.world import FOLDER_INBOX, FOLDERS, PageWorld
from devtools.simulator import SimRequest, SimResponse, SimulatorError

DEFAULT_LIMIT = 25
MAX_LIMIT = 100

THROTTLE_MESSAGES = {
    4: "(#4) Application request limit reached",
    17: "(#17) User request limit reached",
    32: "(#32) Page request limit reached",
    613: "(#613) Calls to this api have exceeded the rate limit.",
    80001: (
        "(#80001) There have been too many calls to this Page account. Wait a bit and try again."
    ),
    80006: "(#80006) There have been too many messenger api calls to this Page account.",
}


# -- errors ------------------------------------------------------------------------------------


def graph_error(code: int, message: str, *, status: int = 400, **extra: Any) -> SimulatorError:
    body = {
        "error": {
            "message": message,
            "type": "OAuthException",
            "code": code,
            "fbtrace_id": f"Sim{random.randrange(16**10):010x}",
            **extra,
        }
    }
    return SimulatorError(status, body)


def not_found(object_id: str) -> SimulatorError:
    return graph_error(
        100, f"(#100) Unsupported get request. Object with ID '{object_id}' does not exist"
    )


def token_invalid() -> SimulatorError:
    return graph_error(
        190,
        "Error validating access token: The session has been invalidated.",
        status=400,
        error_subcode=460,
    )


def throttled(throttle_code: int) -> SimulatorError:
    return SimulatorError(
        400,
        {
            "error": {
                "message": THROTTLE_MESSAGES[throttle_code],
                "type": "OAuthException",
                "code": throttle_code,
                "is_transient": True,
                "fbtrace_id": "SimThrottled",
            }
        },
    )


def fault() -> SimResponse:
    return SimResponse(
        500,
        {
            "error": {
                "message": "An unexpected error has occurred. Please retry your request later.",
                "type": "OAuthException",
                "code": 2,
                "is_transient": True,
                "fbtrace_id": "SimFault",
            }
        },
    )


# -- cursors and query parameters --------------------------------------------------------------


def encode_cursor(value: str) -> str:
    return base64.urlsafe_b64encode(("QVFI" + value).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    try:
        decoded = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (ValueError, UnicodeDecodeError) as error:
        raise graph_error(100, "Invalid cursor", status=400) from error
    if not decoded.startswith("QVFI"):
        raise graph_error(100, "Invalid cursor", status=400)
    return decoded[4:]


def limit_param(request: SimRequest) -> int:
    raw = request.query.get("limit", str(DEFAULT_LIMIT))
    if not raw.isdigit() or int(raw) < 1:
        raise graph_error(100, "(#100) The parameter limit must be a positive integer")
    return min(int(raw), MAX_LIMIT)


def fields_param(request: SimRequest, default: str) -> dict[str, FieldSpec]:
    try:
        return fields_parse(request.query.get("fields") or default)
    except FieldsInvalid as error:
        raise graph_error(100, f"(#100) {error}") from error


def folder_param(request: SimRequest) -> str:
    folder = request.query.get("folder", FOLDER_INBOX)
    if folder not in FOLDERS:
        raise graph_error(100, f"(#100) param folder must be one of {{{', '.join(FOLDERS)}}}")
    return folder


# -- headers and shapes ------------------------------------------------------------------------


def usage_headers(world: PageWorld, in_window: int, regain_minutes: int) -> dict[str, str]:
    """Meta's usage headers: percentages of the quota (the page's rate, or a nominal
    10,000 calls per window when unlimited), and minutes until access is regained."""
    quota = world.rate_limit or 10_000
    percent = min(100, math.ceil(in_window * 100 / quota))
    return {
        "X-App-Usage": json.dumps(
            {"call_count": percent, "total_time": percent // 2, "total_cputime": percent // 3}
        ),
        "X-Business-Use-Case-Usage": json.dumps(
            {
                world.page_id: [
                    {
                        "type": "pages",
                        "call_count": percent,
                        "total_cputime": percent // 3,
                        "total_time": percent // 2,
                        "estimated_time_to_regain_access": regain_minutes,
                    }
                ]
            }
        ),
    }


def drifted(document: dict[str, Any], variant: int) -> dict[str, Any]:
    """The answer in one of four drifted shapes (a field retyped or missing, an envelope
    renamed); changes `document` in place."""
    items = document.get("data")
    if not isinstance(items, list) or not items:
        return {"result": document}  # the envelope itself renamed
    first = items[0]
    if variant == 0 and "updated_time" in first:
        first["updated_time"] = int(time.time())  # epoch number instead of a string
    elif variant == 1 and "participants" in first:
        first["participants"] = first["participants"]["data"]  # list without its envelope
    elif variant == 2:
        first.pop("id", None)  # a node without its id
    else:
        document["items"] = document.pop("data")  # envelope key renamed
    return document
