"""Meta's Messenger webhook endpoint (verification GET, event POST).

POST: the signature is checked over the raw bytes (never re-serialised); a bad one is a 403 and
stores nothing but a counter. A signed payload is answered only once its receipt is durably
stored (C7; see `conversations.services.webhook`): 200 when it was applied (`processed`), applied
but for events that fit no schema (`quarantined`, kept for `webhook_reprocess`), or stored as
`failed` for the retry schedule (a processing failure is ours to retry, not Meta's); 400 only
when the bytes are not a page payload at all: the receipt is kept as `rejected` with the reason
(Meta sending the same bytes again would not help). 503 `database_unavailable` when the database
cannot be reached: nothing was stored, so nothing is acknowledged, and Meta delivers again.
Never a 500 for bad input.
"""

from __future__ import annotations

import hmac

from django.conf import settings
from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods

from conversations import metrics
from conversations.models import ReceiptStatus
from conversations.services import webhook_receive
from conversations.signatures import signature_is_valid
from evoflow.api.errors import PERMISSION_DENIED

INVALID_PAYLOAD = "invalid_payload"
INVALID_SIGNATURE = "invalid_signature"
DATABASE_UNAVAILABLE = "database_unavailable"
# Seconds Meta is asked to wait before delivering again while the database is down.
RETRY_AFTER_SECONDS = 5


@csrf_exempt
@require_http_methods(["GET", "POST"])
def messenger_webhook(request: HttpRequest) -> HttpResponse:
    if request.method == "GET":
        return _verify(request)
    return _receive(request)


def _verify(request: HttpRequest) -> HttpResponse:
    mode = request.GET.get("hub.mode")
    token = request.GET.get("hub.verify_token", "")
    challenge = request.GET.get("hub.challenge", "")
    if mode == "subscribe" and hmac.compare_digest(
        token.encode(), settings.FB_VERIFY_TOKEN.encode()
    ):
        return HttpResponse(challenge, content_type="text/plain")
    return JsonResponse(
        {"code": PERMISSION_DENIED, "detail": "Verification token mismatch."}, status=403
    )


def _receive(request: HttpRequest) -> HttpResponse:
    body = request.body
    if not signature_is_valid(
        body, request.headers.get("X-Hub-Signature-256"), secret=settings.FB_APP_SECRET
    ):
        metrics.WEBHOOK_SIGNATURE_REJECTED.inc()
        return JsonResponse(
            {"code": INVALID_SIGNATURE, "detail": "Missing or invalid X-Hub-Signature-256."},
            status=403,
        )
    try:
        outcome = webhook_receive(body=body)
    except (OperationalError, InterfaceError):
        # Django drops the broken connection when the request ends; the next one reconnects.
        metrics.WEBHOOK_RECEIPTS.labels("unavailable").inc()
        response = JsonResponse(
            {
                "code": DATABASE_UNAVAILABLE,
                "detail": "The database is unavailable; nothing was stored. Deliver again.",
            },
            status=503,
        )
        response["Retry-After"] = str(RETRY_AFTER_SECONDS)
        return response
    if outcome.status == ReceiptStatus.REJECTED:
        return JsonResponse(
            {
                "code": INVALID_PAYLOAD,
                "detail": f"Not a Messenger page payload: {outcome.error}",
                "receipt_id": outcome.receipt_id,
            },
            status=400,
        )
    return JsonResponse({"receipt_id": outcome.receipt_id, "status": outcome.status})
