"""Django settings for evoflow, read from the environment.

Every setting named in the README comes from an environment variable. With `DEBUG` on (what
`make run` and the test suite use) missing secrets get safe local values; with `DEBUG` off the
process refuses to start until every secret is given (production mode).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from evoflow import local_database, secret_checks

BASE_DIR = Path(__file__).resolve().parent.parent

# A development checkout says so in `.local/env` (written by `make`; KEY=VALUE lines), so that
# `manage.py` works there without exporting anything. Real environment variables win, and a
# deployment has no `.local/`, so production is never affected.
# `make run` adds where its simulators listen (CRM_BASE_URL, GRAPH_API_BASE_URL), so commands
# run beside it reach them; EVOFLOW_LOCAL_ENV names another file.
LOCAL_ENV_FILE = Path(
    os.environ.get("EVOFLOW_LOCAL_ENV", "").strip() or BASE_DIR / ".local" / "env"
)


def load_local_env(path: Path) -> None:
    if not path.is_file():
        return
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            name, _, value = line.partition("=")
            os.environ.setdefault(name.strip(), value.strip())


load_local_env(LOCAL_ENV_FILE)


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (1/0, true/false), got {raw!r}")


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} must be an integer, got {raw!r}") from exc


def env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} must be a number, got {raw!r}") from exc
    if not value > 0 or value == float("inf"):
        raise ImproperlyConfigured(f"{name} must be a positive number, got {raw!r}")
    return value


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


DEBUG = env_bool("DEBUG", default=False)

# Secrets: production (DEBUG off) must set each one; local runs get fixed, obviously fake values.
# The local encryption key is a valid Fernet key (32 zero bytes, base64) and must never reach
# production, which is why it only applies with DEBUG on.
LOCAL_SECRETS = {
    "SECRET_KEY": "local-insecure-secret-key-for-development-only",
    "FB_APP_SECRET": "local-app-secret",
    "FB_VERIFY_TOKEN": "local-verify-token",
    "FIELD_ENCRYPTION_KEY": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
    "CRM_API_TOKEN": "local-crm-token",
}
# The demo accounts' local password (evoflow.demo), public as well.
LOCAL_DEMO_PASSWORD = "evoflow-local-demo"
missing_secrets = [name for name in LOCAL_SECRETS if not os.environ.get(name, "").strip()]
if not DEBUG:
    missing = list(missing_secrets)
    if not os.environ.get("DATABASE_URL", "").strip():
        missing.append("DATABASE_URL")
    if missing:
        raise ImproperlyConfigured(
            "Production mode (DEBUG is off) needs these environment variables: "
            + ", ".join(sorted(missing))
            + ". For local use run `make run`, or set DEBUG=1."
        )
    # Set is not enough: a public placeholder, a short secret or a key Fernet refuses would
    # only fail at first use (or never, while anyone could forge with it).
    secret_problems = secret_checks.secret_problems(
        {name: os.environ[name].strip() for name in LOCAL_SECRETS},
        placeholders={*LOCAL_SECRETS.values(), LOCAL_DEMO_PASSWORD},
    )
    if secret_problems:
        raise ImproperlyConfigured(
            "Production mode (DEBUG is off) refuses these secrets:\n- "
            + "\n- ".join(secret_problems)
        )


def secret(name: str) -> str:
    return os.environ.get(name, "").strip() or LOCAL_SECRETS[name]


SECRET_KEY = secret("SECRET_KEY")
FB_APP_SECRET = secret("FB_APP_SECRET")
FB_VERIFY_TOKEN = secret("FB_VERIFY_TOKEN")
FIELD_ENCRYPTION_KEY = secret("FIELD_ENCRYPTION_KEY")
CRM_API_TOKEN = secret("CRM_API_TOKEN")

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]"] if DEBUG else [])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

# Local runs talk to the simulators that `make run` starts; production to the real services.
GRAPH_API_BASE_URL = os.environ.get(
    "GRAPH_API_BASE_URL",
    "http://127.0.0.1:8012/v21.0" if DEBUG else "https://graph.facebook.com/v21.0",
)
CRM_BASE_URL = os.environ.get("CRM_BASE_URL", "http://127.0.0.1:8011" if DEBUG else "")
# Graph API calls (docs/conversations.md): one limiter shared by every process, per page and per
# app; a throttled bucket waits what Meta says, at most this long before trying again.
GRAPH_PAGE_CALLS_PER_SECOND = env_float("GRAPH_PAGE_CALLS_PER_SECOND", 2.0)
GRAPH_APP_CALLS_PER_SECOND = env_float("GRAPH_APP_CALLS_PER_SECOND", 50.0)
GRAPH_THROTTLE_MAX_WAIT_SECONDS = env_float("GRAPH_THROTTLE_MAX_WAIT_SECONDS", 900.0)
GRAPH_TIMEOUT_SECONDS = env_float("GRAPH_TIMEOUT_SECONDS", 20.0)
# Sync runs: the lease a worker holds on its page without a heartbeat, the time one run may take
# before it stops as partial (below Q_TIMEOUT), the overlap an incremental walk goes past the
# watermark, the folders walked, and every how many minutes active pages sync incrementally.
SYNC_LEASE_SECONDS = env_int("SYNC_LEASE_SECONDS", 120)
SYNC_QUEUED_EXPIRY_SECONDS = env_int("SYNC_QUEUED_EXPIRY_SECONDS", 1800)
SYNC_TIME_BUDGET_SECONDS = env_int("SYNC_TIME_BUDGET_SECONDS", 240)
SYNC_INCREMENTAL_OVERLAP_SECONDS = env_int("SYNC_INCREMENTAL_OVERLAP_SECONDS", 300)
SYNC_FOLDERS = env_list("SYNC_FOLDERS", ["inbox", "other", "page_done", "spam"])
SYNC_BATCH_ATTEMPTS = env_int("SYNC_BATCH_ATTEMPTS", 3)
SYNC_SCHEDULE_MINUTES = env_int("SYNC_SCHEDULE_MINUTES", 15)
# conversations.sync_failing: a page whose syncs keep ending partial or failed (or that has not
# synced successfully for hours) is a warning, and past the second pair of limits an error.
SYNC_FAILING_WARNING_RUNS = env_int("SYNC_FAILING_WARNING_RUNS", 3)
SYNC_FAILING_ERROR_RUNS = env_int("SYNC_FAILING_ERROR_RUNS", 8)
SYNC_FAILING_WARNING_HOURS = env_float("SYNC_FAILING_WARNING_HOURS", 6.0)
SYNC_FAILING_ERROR_HOURS = env_float("SYNC_FAILING_ERROR_HOURS", 24.0)
# Progress streams (conversations/streams.py): how many one web process keeps open at once.
# Below the process's request threads (gunicorn.conf.py checks it), so others always get one.
SSE_MAX_STREAMS_PER_PROCESS = env_int("SSE_MAX_STREAMS_PER_PROCESS", 2)
# Journeys (docs/journeys.md): how long a worker's claim on a session lasts without a write,
# when a live session without a worker counts as stalled, and whether new contact stubs are
# enriched from the CRM by a background task.
JOURNEYS_SESSION_LEASE_SECONDS = env_int("JOURNEYS_SESSION_LEASE_SECONDS", 300)
JOURNEYS_STALLED_AFTER_SECONDS = env_int("JOURNEYS_STALLED_AFTER_SECONDS", 120)
JOURNEYS_ENRICH_CONTACTS = env_bool("JOURNEYS_ENRICH_CONTACTS", default=True)
JOURNEYS_MAX_STEPS_PER_SESSION = env_int("JOURNEYS_MAX_STEPS_PER_SESSION", 1000)
# Hosts (or host:port) that http_request nodes may call, "*" for any; empty refuses the node.
# Locally the CRM simulator's hooks, so demo and test flows work.
JOURNEYS_HTTP_ALLOWED_HOSTS = env_list(
    "JOURNEYS_HTTP_ALLOWED_HOSTS", ["127.0.0.1", "localhost"] if DEBUG else []
)
REDIS_URL = os.environ.get("REDIS_URL", "").strip() or None
# Integrity alerts (README "Alerting") are posted here; the timeout bounds each of the two tries,
# so a dead receiver delays a run by seconds, never minutes.
ALERT_WEBHOOK_URL = os.environ.get("ALERT_WEBHOOK_URL", "").strip() or None
ALERT_WEBHOOK_TIMEOUT_SECONDS = env_float("ALERT_WEBHOOK_TIMEOUT_SECONDS", 5.0)
EVOFLOW_PG_PORT = env_int("EVOFLOW_PG_PORT", local_database.DEFAULT_PORT)
EVOFLOW_WEB_PORT = env_int("EVOFLOW_WEB_PORT", 8000)

INSTALLED_APPS = [
    # Django's admin with evoflow's site: the operator dashboard is its index page.
    "evoflow.apps.EvoflowAdminConfig",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    # After django.contrib.auth, so its post-migrate hook sees each app's fresh permissions.
    "evoflow.apps.EvoflowConfig",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_q",
    "pgtrigger",
    "journeys",
    "conversations",
    "deliveries",
]

MIDDLEWARE = [
    "evoflow.middleware.RequestIdMiddleware",
    "evoflow.middleware.MetricsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, so it sees the exceptions of the views themselves.
    "evoflow.middleware.DatabaseUnavailableMiddleware",
]

if not DEBUG:
    # In production gunicorn serves the collected static files (admin, API docs UI) itself, so
    # nothing comes from a CDN; runserver does that in local runs.
    MIDDLEWARE.insert(
        MIDDLEWARE.index("django.middleware.security.SecurityMiddleware") + 1,
        "whitenoise.middleware.WhiteNoiseMiddleware",
    )

ROOT_URLCONF = "evoflow.urls"
WSGI_APPLICATION = "evoflow.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "evoflow" / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# The database: DATABASE_URL, or the embedded cluster that `python -m devtools.localdb start`
# runs under .local/ (its URL depends only on EVOFLOW_PG_PORT).
DATABASE_URL = os.environ.get("DATABASE_URL", "").strip() or local_database.database_url(
    EVOFLOW_PG_PORT
)
DATABASES = {
    "default": dj_database_url.parse(
        DATABASE_URL,
        conn_max_age=env_int("DB_CONN_MAX_AGE", 60),
        conn_health_checks=True,
    )
}
DATABASES["default"].setdefault("OPTIONS", {})
# Connection pooling (docs/operations.md, "Connection pooling"). DATABASE_POOLER=transaction
# when DATABASE_URL points at PgBouncer in transaction mode: a server connection then serves
# another client after every transaction, so nothing may outlive one. Server-side cursors
# (`.iterator()`) are named cursors that outlive their transaction outside atomic blocks, and
# psycopg's prepared statements live in the server connection: PgBouncer 1.18 carries neither.
# PgBouncer also refuses the `options` startup parameter, so the statement timeout then comes
# from the role (`ALTER ROLE ... SET statement_timeout`), not from the connection string.
DATABASE_POOLER = os.environ.get("DATABASE_POOLER", "").strip().lower() or "none"
if DATABASE_POOLER not in {"none", "transaction"}:
    raise ImproperlyConfigured("DATABASE_POOLER must be 'none' or 'transaction'")
DB_STATEMENT_TIMEOUT_MS = env_int("DB_STATEMENT_TIMEOUT_MS", 30_000)
if DATABASE_POOLER == "transaction":
    DATABASES["default"]["DISABLE_SERVER_SIDE_CURSORS"] = True
    DATABASES["default"]["OPTIONS"]["prepare_threshold"] = None
else:
    # Short statements by default: a runaway query must not hold locks for minutes.
    DATABASES["default"]["OPTIONS"].setdefault(
        "options", f"-c statement_timeout={DB_STATEMENT_TIMEOUT_MS}"
    )
DATABASES["default"]["TEST"] = {"NAME": os.environ.get("TEST_DATABASE_NAME") or None}

AUTH_USER_MODEL = "evoflow.User"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
# One time format in the admin (`2026-12-01 21:00:38 UTC`): evoflow/formats/.
FORMAT_MODULE_PATH = ["evoflow.formats"]
USE_I18N = True
USE_TZ = True

# Region used to read phone numbers written without a country code.
PHONE_DEFAULT_REGION = os.environ.get("PHONE_DEFAULT_REGION", "US")

STATIC_URL = "static/"
STATIC_ROOT = Path(os.environ.get("STATIC_ROOT", "").strip() or BASE_DIR / ".local" / "static")
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
        if DEBUG
        else "whitenoise.storage.CompressedManifestStaticFilesStorage"
    },
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
if not DEBUG:
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_CONTENT_TYPE_NOSNIFF = True


def env_throttle_rate(name: str, default: str) -> str:
    """A DRF rate, "<requests>/<second|minute|hour|day>" (DRF reads only the unit's first
    letter), checked here so a typo stops the process instead of the first request."""
    raw = os.environ.get(name, "").strip() or default
    count, _, period = raw.partition("/")
    if not (count.isdigit() and int(count) > 0 and period[:1] in {"s", "m", "h", "d"}):
        raise ImproperlyConfigured(
            f"{name} must be a rate like 120/min (requests per s, min, hour or day), got {raw!r}"
        )
    return raw


API_THROTTLE_ANON_RATE = env_throttle_rate("API_THROTTLE_ANON_RATE", "120/min")
API_THROTTLE_USER_RATE = env_throttle_rate("API_THROTTLE_USER_RATE", "1200/min")
API_THROTTLE_NUM_PROXIES = env_int("API_THROTTLE_NUM_PROXIES", 0)

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "evoflow.api.pagination.CheckedCursorPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "evoflow.api.errors.exception_handler",
    # Bodies are JSON only (docs/api.md): form encodings turn "" into "absent" and lists into
    # repeated keys, so they would accept what the schema refuses. Anything else is 415.
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "TEST_REQUEST_DEFAULT_FORMAT": "json",
    "DEFAULT_RENDERER_CLASSES": [
        "rest_framework.renderers.JSONRenderer",
        "rest_framework.renderers.BrowsableAPIRenderer",
    ],
    # On by default: anonymous requests per client IP, authenticated ones per user. Meta's
    # webhook is a plain Django view, outside DRF, so it is never throttled (Meta retries).
    "DEFAULT_THROTTLE_CLASSES": [
        "rest_framework.throttling.AnonRateThrottle",
        "rest_framework.throttling.UserRateThrottle",
    ],
    "DEFAULT_THROTTLE_RATES": {"anon": API_THROTTLE_ANON_RATE, "user": API_THROTTLE_USER_RATE},
    # How many proxies in front of the web processes add to X-Forwarded-For: 0 takes the TCP
    # peer's address, so a client cannot pick its own throttle bucket with a forged header.
    "NUM_PROXIES": API_THROTTLE_NUM_PROXIES,
}

SPECTACULAR_SETTINGS = {
    "TITLE": "evoflow API",
    "DESCRIPTION": "Journeys, Messenger conversations and event deliveries.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # The schema describes the API, it grants nothing: the frontend may read it before login.
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    # The UI's JavaScript and CSS come from the installed sidecar package, never from a CDN.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    # Enum components are named after what they list, not after a hash of their values.
    "ENUM_NAME_OVERRIDES": {
        "SessionStatus": "journeys.models.SessionStatus",
        "DeliveryStatus": "deliveries.models.MessageDelivery.Status",
        "SyncMode": "conversations.models.SyncMode",
        "SyncStatus": "conversations.models.SyncStatus",
        "MessageDirection": "conversations.models.Direction",
        "MessageSource": "conversations.models.Source",
    },
    # The generic error statuses and the one Error component (evoflow/api/schema.py).
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "evoflow.api.schema.error_responses_document",
    ],
    # One tag per area of the API; /api/docs/ groups the operations under them.
    "TAGS": [
        {
            "name": "journeys",
            "description": "Journeys: their flows, and starting one for a contact.",
        },
        {
            "name": "journey-sessions",
            "description": "The runs of a journey for one contact: read, pause, resume, cancel.",
        },
        {
            "name": "contact-events",
            "description": "Events about a contact that start or resume journeys.",
        },
        {
            "name": "conversations",
            "description": "Messenger conversations and their messages (operators).",
        },
        {
            "name": "sync",
            "description": "Graph API syncs of a Facebook page: request, read and follow runs.",
        },
        {"name": "events", "description": "A host's events, their guests and their messages."},
        {"name": "me", "description": "What the requesting user receives."},
        {"name": "integrity", "description": "The latest results of the integrity checks."},
        {"name": "root", "description": "Where the API's resources are."},
    ],
}

# Background work: django-q2. The broker is the Django ORM (the same Postgres) unless REDIS_URL
# is set. `timeout` stays below `retry` so a task is never handed out again while it still runs.
Q_CLUSTER: dict[str, Any] = {
    "name": "evoflow",
    "workers": env_int("Q_WORKERS", 2),
    "timeout": env_int("Q_TIMEOUT", 300),
    "retry": env_int("Q_RETRY", 360),
    "max_attempts": env_int("Q_MAX_ATTEMPTS", 5),
    "ack_failures": True,
    "catch_up": False,
    "save_limit": 10_000,
    "poll": 0.2,
    "label": "Background tasks",
}
if Q_CLUSTER["timeout"] >= Q_CLUSTER["retry"]:
    raise ImproperlyConfigured(
        "Q_TIMEOUT must be below Q_RETRY, or a task still running would be handed out again"
    )
if Q_CLUSTER["timeout"] <= SYNC_TIME_BUDGET_SECONDS:
    raise ImproperlyConfigured(
        "SYNC_TIME_BUDGET_SECONDS must be below Q_TIMEOUT, or the worker would kill a sync run"
        " before it stops cleanly and saves where it was"
    )
if REDIS_URL:
    Q_CLUSTER["redis"] = REDIS_URL
else:
    Q_CLUSTER["orm"] = "default"

LOG_LEVEL = os.environ.get("LOG_LEVEL", "INFO").upper()
LOG_FORMAT = os.environ.get("LOG_FORMAT", "text" if DEBUG else "json")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {
        "request_id": {"()": "evoflow.logging.RequestIdFilter"},
        "redact_secrets": {"()": "evoflow.logging.RedactSecretsFilter"},
    },
    "formatters": {
        "json": {"()": "evoflow.logging.JsonFormatter"},
        "text": {
            "format": "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s",
        },
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "filters": ["request_id", "redact_secrets"],
            "formatter": LOG_FORMAT,
        },
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django.db.backends": {"level": "INFO"},
        # The development server's request lines (query strings included) through the project's
        # handler, so they carry the request id and pass the secret redaction.
        "django.server": {"handlers": ["console"], "level": "INFO", "propagate": False},
        # django-q2 logs under "django-q" (with a dash).
        "django-q": {"level": os.environ.get("Q_LOG_LEVEL", "INFO").upper()},
    },
}

# Integrity: each check query runs under this statement timeout.
INTEGRITY_STATEMENT_TIMEOUT_MS = env_int("INTEGRITY_STATEMENT_TIMEOUT_MS", 20_000)
# Checks that can read only the rows changed since the previous run do so while their last
# full sweep is younger than this (the daily schedule sweeps fully); `integrity --full` forces
# one. The window starts this many seconds before the previous run did, for transactions that
# were still open then.
INTEGRITY_FULL_SWEEP_HOURS = env_int("INTEGRITY_FULL_SWEEP_HOURS", 26)
INTEGRITY_CHANGE_OVERLAP_SECONDS = env_int("INTEGRITY_CHANGE_OVERLAP_SECONDS", 3600)
