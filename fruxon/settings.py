"""Settings, all read from the environment.

``DATABASE_URL``   database (default: SQLite file ``db/fruxon.sqlite3``)
``REDIS_URL``      Celery broker/result backend and cache; unset = Celery eager
``SECRET_KEY``     Django's signing key (a development default only with DEBUG)
``FRUXON_ENCRYPTION_KEY``  comma-separated Fernet keys, newest first
``DEBUG``          "1"/"true" for development
``ALLOWED_HOSTS``  comma-separated
``FRUXON_RUN_SYNCHRONOUS_COMMIT``  "1": run records wait for the WAL flush too (see below)
``DB_CONN_MAX_AGE``  seconds a thread keeps its PostgreSQL connection (default 60)
``DB_POOL_MAX_SIZE``  PostgreSQL connection pool per process (0 = off, the default; replaces
                   DB_CONN_MAX_AGE); ``DB_POOL_MIN_SIZE`` (2), ``DB_POOL_TIMEOUT`` seconds (2)
``FRUXON_EGRESS_ALLOW``  internal addresses outbound calls (model providers, integrations, webhooks)
                   may reach: comma-separated IPs or CIDRs, each with an optional ``:port``
                   (``127.0.0.1:9100,10.0.0.0/8``; IPv6 ``[::1]:9100`` or ``fd00::/8``); default none.
                   Loopback, private, link-local, metadata, CGNAT, multicast and reserved
                   addresses are refused otherwise; a bad value stops start-up
``EMAIL_HOST``, ``EMAIL_PORT``  SMTP server for alert emails (default localhost:25; the console backend
                   under DEBUG or tests, or as ``EMAIL_BACKEND`` says); ``EMAIL_HOST_USER`` and
                   ``EMAIL_HOST_PASSWORD`` log in; ``EMAIL_USE_TLS`` (STARTTLS, usually port 587) or
                   ``EMAIL_USE_SSL`` (implicit TLS, usually 465), not both; ``EMAIL_TIMEOUT`` seconds (30);
                   ``DEFAULT_FROM_EMAIL`` the sender
``FRUXON_ALERT_RETRY_HOURS``  how long alert deliveries are retried before they are marked failed
                   (24); backoff from ``FRUXON_ALERT_BACKOFF_SECONDS`` (30), doubling, at most
                   ``FRUXON_ALERT_BACKOFF_MAX_SECONDS`` (3600), with jitter
``FRUXON_WEBHOOK_SECRET_GRACE_HOURS``  after a webhook secret rotation the previous secret also
                   signs for this long (24), as a second signature
"""
from pathlib import Path
import os
import sys

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def env_bool(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


DEBUG = env_bool("DEBUG", False)
# pytest imports settings itself; running under it implies test settings.
TESTING = env_bool("FRUXON_TESTING", False) or "pytest" in sys.modules

# Development-only defaults: they are refused unless DEBUG or tests are on,
# so a production deploy cannot silently run on a public key.
_DEV_SECRET_KEY = "dev-insecure-fruxon-secret-key-change-me-in-production-0123456789"
_DEV_FERNET_KEY = "ZnJ1eG9uLWRldi1vbmx5LWZlcm5ldC1rZXktMDAwMDA="

SECRET_KEY = os.environ.get("SECRET_KEY") or (_DEV_SECRET_KEY if (DEBUG or TESTING) else "")
if not SECRET_KEY:
    raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is off")

FRUXON_ENCRYPTION_KEYS = env_list("FRUXON_ENCRYPTION_KEY") or ([_DEV_FERNET_KEY] if (DEBUG or TESTING) else [])
if not FRUXON_ENCRYPTION_KEYS:
    raise ImproperlyConfigured("FRUXON_ENCRYPTION_KEY must be set when DEBUG is off")

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1],testserver")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")

INSTALLED_APPS = [
    "fruxon.admin_site.FruxonAdminConfig",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "guardian",
    "fruxon",
    "orgs",
    "agents",
    "deployments",
    "evaluations",
    "monitoring",
]

MIDDLEWARE = [
    "fruxon.middleware.RequestTimerMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "fruxon.urls"
# Messages live in the session, not a signed cookie: the admin shows a new API
# key's plaintext once through a message, and cookies are readable by the client.
MESSAGE_STORAGE = "django.contrib.messages.storage.session.SessionStorage"
WSGI_APPLICATION = "fruxon.wsgi.application"
# "/v1/orgs" must not be redirected to "/v1/orgs/": API paths are exact.
APPEND_SLASH = False
CSRF_FAILURE_VIEW = "fruxon.api.errors.csrf_failure"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "fruxon" / "templates"],
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

_default_sqlite = BASE_DIR / "db" / "fruxon.sqlite3"
DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL") or f"sqlite:///{_default_sqlite}",
        conn_max_age=int(os.environ.get("DB_CONN_MAX_AGE", "60")),
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    (BASE_DIR / "db").mkdir(exist_ok=True)
    # Concurrent requests on SQLite: transactions take the write lock when they
    # begin (IMMEDIATE) and wait up to 20 s for it, instead of failing when a
    # read lock cannot be upgraded; WAL lets readers run beside the writer.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {"timeout": 20, "transaction_mode": "IMMEDIATE", "init_command": "PRAGMA journal_mode=WAL;"}
    )
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    # A file (not shared memory) for tests, so threaded live-server tests can lock and wait.
    DATABASES["default"]["TEST"] = {"NAME": str(BASE_DIR / "db" / f"test-{os.getpid()}.sqlite3")}
elif DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql" and int(
        os.environ.get("DB_POOL_MAX_SIZE") or (16 if os.environ.get("FRUXON_ASGI") == "1" else 0)):
    # A connection pool (psycopg_pool) per process instead of one persistent
    # connection per thread: hundreds of threads waiting on model providers then
    # share a few connections (the execute path hands its connection back while it
    # waits, see fruxon.db), and ASGI's per-request threads reuse connections too.
    # The pool replaces CONN_MAX_AGE, and its health check (one round trip per
    # checkout) is off: a broken connection is discarded when it is returned.
    # Under the ASGI server (fruxon.asgi) a pool is the default: each sync request runs on a thread of
    # its own, so a persistent connection per thread would be opened per request and never reused.
    _pool_max = int(os.environ.get("DB_POOL_MAX_SIZE") or 16)
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = False
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": min(_pool_max, int(os.environ.get("DB_POOL_MIN_SIZE", "2"))),
        "max_size": _pool_max,
        "timeout": float(os.environ.get("DB_POOL_TIMEOUT", "2")),
    }
elif os.environ.get("FRUXON_ASGI") == "1":
    # Under ASGI without a pool (DB_POOL_MAX_SIZE=0): close each request's connection, since the
    # thread that opened it is not reused.
    DATABASES["default"]["CONN_MAX_AGE"] = 0
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTHENTICATION_BACKENDS = [
    "django.contrib.auth.backends.ModelBackend",
    "guardian.backends.ObjectPermissionBackend",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
if TESTING:
    # Tests create many users; the default PBKDF2 cost would dominate the run.
    PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"

REDIS_URL = os.environ.get("REDIS_URL", "")

if REDIS_URL:
    CACHES = {
        "default": {
            # Django's Redis backend, sharing one client and pool per process (fruxon/cache.py).
            "BACKEND": "fruxon.cache.SharedRedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": "fruxon",
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

CELERY_BROKER_URL = REDIS_URL or "memory://"
CELERY_RESULT_BACKEND = REDIS_URL or "cache+memory://"
CELERY_TASK_ALWAYS_EAGER = not REDIS_URL
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_TIMEZONE = "UTC"
CELERY_TASK_ROUTES = {
    "deployments.run_shadow": {"queue": "shadow"},
    "evaluations.run_evaluation": {"queue": "evaluations"},
    "evaluations.evaluate_chunk": {"queue": "evaluations"},
}
# How long an unacknowledged task may stay with a worker before Redis hands it to
# another (a killed worker's tasks come back after this). Longer than any task.
_VISIBILITY = int(os.environ.get("FRUXON_VISIBILITY_TIMEOUT", "3600"))
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": _VISIBILITY,
    # sweep for abandoned messages often enough to honour a short timeout
    "unacked_restore_interval": max(1, min(10, _VISIBILITY // 2)),
    "unacked_restore_throttle": 1 if _VISIBILITY < 60 else 10,
}
# The shortest lease of a worker's claim on an evaluation case it runs (evaluations.services.runs.
# claim_lease makes it longer for slow specs). A redelivered message takes its own claims back at
# once; a claim of a dead worker blocks other deliveries of the case until it expires.
FRUXON_EVALUATION_CLAIM_SECONDS = max(1, int(os.environ.get("FRUXON_EVALUATION_CLAIM_SECONDS", "0") or 0)
                                      or min(_VISIBILITY, 240))
DEFAULT_FROM_EMAIL = os.environ.get("DEFAULT_FROM_EMAIL", "fruxon@localhost")
EMAIL_BACKEND = os.environ.get("EMAIL_BACKEND", "django.core.mail.backends.console.EmailBackend" if (DEBUG or TESTING)
                               else "django.core.mail.backends.smtp.EmailBackend")
EMAIL_HOST = os.environ.get("EMAIL_HOST", "localhost")
EMAIL_PORT = int(os.environ.get("EMAIL_PORT", "25"))
CELERY_BEAT_SCHEDULE: dict = {
    "deployments-tick-scheduled": {"task": "deployments.tick_scheduled", "schedule": 15.0},
    "deployments-auto-rollback": {"task": "deployments.auto_rollback", "schedule": 60.0},
    "evaluations-tick-schedules": {"task": "evaluations.tick_schedules", "schedule": 60.0},
    "evaluations-resume-stalled": {"task": "evaluations.resume_stalled", "schedule": 60.0},
    "monitoring-purge-expired-runs": {"task": "monitoring.purge_expired_runs", "schedule": 3600.0},
    "budgets-reconcile": {"task": "monitoring.budgets.reconcile", "schedule": 300.0},
    "budgets-release-stale": {"task": "monitoring.budgets.release_stale", "schedule": 300.0},
    "budgets-rollover": {"task": "monitoring.budgets.rollover", "schedule": 60.0},
}

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "fruxon.api.authentication.ApiKeyAuthentication",
        "fruxon.api.authentication.UserTokenAuthentication",
        "fruxon.api.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["fruxon.api.permissions.IsAuthenticatedPrincipal"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["fruxon.api.parsers.StoredJSONParser"],
    "DEFAULT_PAGINATION_CLASS": "fruxon.api.pagination.CursorPagination",
    "DEFAULT_METADATA_CLASS": "fruxon.api.metadata.Metadata",
    "PAGE_SIZE": 50,
    "EXCEPTION_HANDLER": "fruxon.api.errors.exception_handler",
    # Errors about the body as a whole (not one field) are reported under details.fields.body.
    "NON_FIELD_ERRORS_KEY": "body",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
    "DEFAULT_THROTTLE_RATES": {"token": "20/min"},
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Fruxon API",
    "DESCRIPTION": (
        "Ship LLM agents safely: organizations, agents, immutable revisions, deploys, "
        "evaluations, budgets and monitoring. Errors always have the shape "
        '{"error": {"code", "message", "details"}}.'
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    "SCHEMA_PATH_PREFIX": r"/v1",
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "fruxon.api.schema.add_error_responses",
    ],
    "ENUM_NAME_OVERRIDES": {
        "OrgRoleEnum": "orgs.roles.ORG_ROLE_CHOICES",
        "IntegrationStatusEnum": "orgs.models.Integration.STATUS_CHOICES",
        "IntegrationKindEnum": "orgs.models.Integration.KIND_CHOICES",
        "AgentGrantRoleEnum": "agents.grants.GRANT_ROLES",
        "DeploymentKindEnum": "deployments.models.DEPLOYMENT_KINDS",
        "EvaluationStatusEnum": "evaluations.models.EVALUATION_STATUSES",
    },
}

# Production hardening; `manage.py check --deploy` is clean with DEBUG off.
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", not DEBUG and not TESTING)
SESSION_COOKIE_SECURE = not DEBUG and not TESTING
CSRF_COOKIE_SECURE = not DEBUG and not TESTING
SECURE_HSTS_SECONDS = int(os.environ.get("SECURE_HSTS_SECONDS", "0" if (DEBUG or TESTING) else "31536000"))
SECURE_HSTS_INCLUDE_SUBDOMAINS = not DEBUG and not TESTING
SECURE_HSTS_PRELOAD = not DEBUG and not TESTING
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"

# The budget ledger: "redis" (default with REDIS_URL) or "database"; see monitoring/ledger.
FRUXON_LEDGER = os.environ.get("FRUXON_LEDGER", "")
FRUXON_LEDGER_REDIS_URL = os.environ.get("FRUXON_LEDGER_REDIS_URL", "")
# How long the database ledger waits for a budget period's row lock before failing closed (503).
FRUXON_LEDGER_LOCK_TIMEOUT_MS = int(os.environ.get("FRUXON_LEDGER_LOCK_TIMEOUT_MS", "3000"))
# A reservation not settled after this long belongs to a dead process and is released.
FRUXON_RESERVATION_TTL_SECONDS = int(os.environ.get("FRUXON_RESERVATION_TTL_SECONDS", "3900"))

# API keys: how long a key lookup stays cached (seconds). Revocation clears it.
FRUXON_KEY_CACHE_SECONDS = int(os.environ.get("FRUXON_KEY_CACHE_SECONDS", "30"))

# Run records (a Run and its spans, one statement) commit without waiting for the
# WAL flush (PostgreSQL ``synchronous_commit = off`` for that statement only): the
# execute answers ~one disk flush sooner. The row is visible at once and never half
# written; only a PostgreSQL crash within ~0.6 s of the commit can lose it. Deploys,
# keys, secrets, budgets and audit events always commit durably. "1" makes run
# records durable too.
FRUXON_RUN_SYNCHRONOUS_COMMIT = env_bool("FRUXON_RUN_SYNCHRONOUS_COMMIT", False)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "WARNING")},
}

# --- Access control: login throttling, personal tokens (issue 12 items 5 and 11) -------------------
# Proxies whose X-Forwarded-For is believed (comma-separated IPs or CIDRs). None by default:
# REMOTE_ADDR is the client. Set it to your load balancer's addresses when one sits in front.
FRUXON_TRUSTED_PROXIES = env_list("FRUXON_TRUSTED_PROXIES")
for _proxy in FRUXON_TRUSTED_PROXIES:  # fail at start, not at the first login
    try:
        __import__("ipaddress").ip_network(_proxy, strict=False)
    except ValueError as _exc:
        raise ImproperlyConfigured(f"FRUXON_TRUSTED_PROXIES: {_exc}") from None
# Failed logins (API token and admin form) before the account / the client address is locked,
# and the window (seconds) they are counted in and a lock lasts.
FRUXON_LOGIN_MAX_FAILURES_PER_ACCOUNT = int(os.environ.get("FRUXON_LOGIN_MAX_FAILURES_PER_ACCOUNT", "10"))
FRUXON_LOGIN_MAX_FAILURES_PER_ADDRESS = int(os.environ.get("FRUXON_LOGIN_MAX_FAILURES_PER_ADDRESS", "30"))
FRUXON_LOGIN_WINDOW_SECONDS = int(os.environ.get("FRUXON_LOGIN_WINDOW_SECONDS", "900"))
# Personal tokens (fxu_) end this many hours after they are issued (and when the password changes).
FRUXON_USER_TOKEN_TTL_HOURS = int(os.environ.get("FRUXON_USER_TOKEN_TTL_HOURS", "720"))

# --- Request limits and bad input (issue 12, items 7 and 9) ---
# A NUL in a URL (path or query; API and admin) is a 400, refused before any view (fruxon.middleware).
MIDDLEWARE.insert(MIDDLEWARE.index("fruxon.middleware.RequestTimerMiddleware") + 1,
                  "fruxon.middleware.RefuseUnstorableURLMiddleware")
# A JSON body nested deeper than this is a 400 (fruxon.api.parsers). A body over
# DATA_UPLOAD_MAX_MEMORY_SIZE (Django's, 2.5 MB by default) is a 413 payload_too_large.
FRUXON_MAX_JSON_DEPTH = int(os.environ.get("FRUXON_MAX_JSON_DEPTH", "64"))
# Spec and run limits (a spec over one is 400 invalid_spec naming it; a run reaching a run limit
# stops with status error and the code max_model_calls_per_run or max_spans_per_run).
FRUXON_MAX_STEPS = int(os.environ.get("FRUXON_MAX_STEPS", "50"))
FRUXON_MAX_TOOLS_PER_STEP = int(os.environ.get("FRUXON_MAX_TOOLS_PER_STEP", "64"))
FRUXON_MAX_SUBAGENTS_PER_STEP = int(os.environ.get("FRUXON_MAX_SUBAGENTS_PER_STEP", "16"))
FRUXON_MAX_SPEC_BYTES = int(os.environ.get("FRUXON_MAX_SPEC_BYTES", str(512 * 1024)))
FRUXON_MAX_MODEL_CALLS_PER_RUN = int(os.environ.get("FRUXON_MAX_MODEL_CALLS_PER_RUN", "200"))
FRUXON_MAX_SPANS_PER_RUN = int(os.environ.get("FRUXON_MAX_SPANS_PER_RUN", "2000"))
# GET /runs/{id} shows at most this many spans (then spansTruncated: true; /runs/{id}/spans pages through all).
FRUXON_RUN_DETAIL_SPANS = int(os.environ.get("FRUXON_RUN_DETAIL_SPANS", "200"))

# --- Egress policy: outbound calls never reach internal addresses unless allowed (issue 12 item 3) ---
# Comma-separated IPs or CIDRs, each with an optional :port ("127.0.0.1:9100,10.0.0.0/8",
# IPv6 as "[::1]:9100" or a bare "fd00::/8"); see agents.engine.egress. Parsed here so a bad
# value stops start-up; fruxon.egress installs it when the apps are ready.
FRUXON_EGRESS_ALLOW = os.environ.get("FRUXON_EGRESS_ALLOW", "")
from agents.engine.egress import EgressConfigError as _EgressConfigError, parse_allow as _parse_egress_allow  # noqa: E402

try:
    _parse_egress_allow(FRUXON_EGRESS_ALLOW)
except _EgressConfigError as _exc:
    raise ImproperlyConfigured(f"FRUXON_EGRESS_ALLOW: {_exc}") from None

# --- Secrets out of logs (issue 12 item 8) ---
# Every handler redacts secret values this process resolved recently (an in-memory registry of at most
# FRUXON_LOG_REDACT_MAX_VALUES values) and credential patterns (Bearer tokens, fx_live_/fxu_ keys, sk-
# keys) from messages, arguments and tracebacks: see fruxon.log_redaction (also installed on Celery
# workers' handlers and on handlers configured outside LOGGING).
FRUXON_LOG_REDACT_MAX_VALUES = int(os.environ.get("FRUXON_LOG_REDACT_MAX_VALUES", "1000"))
LOGGING.setdefault("filters", {})["redact_secrets"] = {"()": "fruxon.log_redaction.RedactSecrets"}
for _handler in LOGGING["handlers"].values():
    _handler.setdefault("filters", []).append("redact_secrets")

# --- Content security policy, API docs offline, static files (issue 12, item 12) -----------------
# Swagger UI (/v1/docs) is served from drf-spectacular-sidecar's static files, never a CDN; static
# files (the admin's, the sidecar's, fruxon/static) are served by WhiteNoise from STATIC_ROOT
# (`manage.py collectstatic`), so a gunicorn-only deploy serves them too. In DEBUG and tests they
# come straight from the apps (no collectstatic needed).
INSTALLED_APPS += ["drf_spectacular_sidecar"]
MIDDLEWARE.insert(MIDDLEWARE.index("django.middleware.security.SecurityMiddleware") + 1,
                  "fruxon.static_files.StaticFilesMiddleware")
WHITENOISE_USE_FINDERS = DEBUG or TESTING
WHITENOISE_AUTOREFRESH = DEBUG
SPECTACULAR_SETTINGS |= {
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # validatorUrl None: Swagger UI would otherwise show a badge fetched from validator.swagger.io.
    "SWAGGER_UI_SETTINGS": {"deepLinking": True, "validatorUrl": None},
}
# Every response carries a CSP (django-csp): only this origin's scripts (no inline script, no
# eval: the admin's and Swagger UI's scripts are static files), no plugins, no framing, no <base>
# rewriting, forms post only here. Styles: this origin's style sheets; inline style *attributes*
# stay allowed (style-src-attr) because Django's admin widgets and the run trace's indentation set
# them, and an attribute can restyle but never run code.
from csp.constants import NONE as _CSP_NONE, SELF as _CSP_SELF, UNSAFE_INLINE as _CSP_UNSAFE_INLINE  # noqa: E402

MIDDLEWARE.insert(MIDDLEWARE.index("django.middleware.security.SecurityMiddleware") + 1,
                  "csp.middleware.CSPMiddleware")
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [_CSP_SELF],
        "script-src": [_CSP_SELF],
        "style-src": [_CSP_SELF],
        "style-src-attr": [_CSP_UNSAFE_INLINE],
        "img-src": [_CSP_SELF, "data:"],
        "font-src": [_CSP_SELF, "data:"],
        "connect-src": [_CSP_SELF],
        "object-src": [_CSP_NONE],
        "base-uri": [_CSP_SELF],
        "frame-ancestors": [_CSP_NONE],
        "form-action": [_CSP_SELF],
    },
}
# X-Content-Type-Options: nosniff is SECURE_CONTENT_TYPE_NOSNIFF above; the referrer stays on this origin.
SECURE_REFERRER_POLICY = "same-origin"

# --- Alerts and webhooks (issue 14 item 2) ---------------------------------------------------------
# SMTP for alert emails (see the module docstring). EMAIL_USE_TLS (STARTTLS) and EMAIL_USE_SSL
# (implicit TLS) cannot both be on.
EMAIL_HOST_USER = os.environ.get("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = os.environ.get("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", False)
EMAIL_USE_SSL = env_bool("EMAIL_USE_SSL", False)
if EMAIL_USE_TLS and EMAIL_USE_SSL:
    raise ImproperlyConfigured("EMAIL_USE_TLS and EMAIL_USE_SSL are exclusive; set one of them")
EMAIL_TIMEOUT = int(os.environ.get("EMAIL_TIMEOUT", "30"))
# Deliveries are retried with exponential backoff (base doubling per attempt, capped, +-25% jitter)
# until an attempt fails once the series is this old; then the delivery is "failed".
FRUXON_ALERT_RETRY_HOURS = float(os.environ.get("FRUXON_ALERT_RETRY_HOURS", "24"))
FRUXON_ALERT_BACKOFF_SECONDS = float(os.environ.get("FRUXON_ALERT_BACKOFF_SECONDS", "30"))
FRUXON_ALERT_BACKOFF_MAX_SECONDS = float(os.environ.get("FRUXON_ALERT_BACKOFF_MAX_SECONDS", "3600"))
# After settings/webhook-secret:rotate, the previous secret keeps signing (a second signature) this long
# unless the request asks otherwise.
FRUXON_WEBHOOK_SECRET_GRACE_HOURS = float(os.environ.get("FRUXON_WEBHOOK_SECRET_GRACE_HOURS", "24"))
CELERY_BEAT_SCHEDULE["monitoring-deliver-due-alerts"] = {"task": "monitoring.deliver_due_alerts", "schedule": 15.0}

# --- Outages: Redis, PostgreSQL and the Celery broker (issue 14 item 3) ---------------------------
# Redis (cache, ledger): connect / read timeouts in seconds, one immediate retry; after a failure the process
# skips Redis for FRUXON_BREAKER_RESET_SECONDS (circuit breaker, fruxon.resilience) and then probes it
# again. The cache treats an outage as a miss (API keys are then read from PostgreSQL); the ledger
# fails closed (503 ledger_unavailable) for enforced budgets. Outages are logged once a minute.
FRUXON_REDIS_CONNECT_TIMEOUT = float(os.environ.get("FRUXON_REDIS_CONNECT_TIMEOUT", "0.1"))
FRUXON_REDIS_SOCKET_TIMEOUT = float(os.environ.get("FRUXON_REDIS_SOCKET_TIMEOUT", "0.25"))
FRUXON_BREAKER_RESET_SECONDS = float(os.environ.get("FRUXON_BREAKER_RESET_SECONDS", "1.0"))
# PostgreSQL: a new connection gives up after DB_CONNECT_TIMEOUT seconds (libpq's minimum is 2), a
# pool checkout after DB_POOL_TIMEOUT (2, see above): an unreachable database answers 503
# database_unavailable (Retry-After: DB_RETRY_AFTER) quickly instead of holding the request.
# TCP keepalives find a peer that vanished without closing its connections.
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    _db_options = DATABASES["default"].setdefault("OPTIONS", {})
    _db_options.setdefault("connect_timeout", int(os.environ.get("DB_CONNECT_TIMEOUT", "2")))
    _db_options.setdefault("keepalives", 1)
    _db_options.setdefault("keepalives_idle", int(os.environ.get("DB_KEEPALIVES_IDLE", "30")))
    _db_options.setdefault("keepalives_interval", 10)
    _db_options.setdefault("keepalives_count", 3)
    # Django's backend, whose pool checkout replaces a connection the server closed (a restart) instead
    # of handing it to a request (fruxon/pg/base.py). Non-pooled persistent connections are checked at
    # the start of each request (CONN_HEALTH_CHECKS, set above).
    DATABASES["default"]["ENGINE"] = "fruxon.pg"
    if isinstance(_db_options.get("pool"), dict):
        # psycopg_pool retries a failed connection with a doubling delay (1, 2, 4, 8 s ...) for
        # reconnect_timeout (5 min by default): after a 10 s outage, requests would wait seconds
        # more for the next attempt. A short one gives up the slot soon, and the next checkout
        # opens a new connection at once.
        _db_options["pool"].setdefault("reconnect_timeout", float(os.environ.get("DB_POOL_RECONNECT_TIMEOUT", "2")))
FRUXON_DB_RETRY_AFTER = int(os.environ.get("DB_RETRY_AFTER", "5"))
# Celery broker: a request never waits on an unreachable broker for more than about a second; what
# it could not send stays in the outbox (fruxon.outbox) and the beat sweep sends it later.
CELERY_BROKER_CONNECTION_TIMEOUT = float(os.environ.get("FRUXON_BROKER_CONNECT_TIMEOUT", "1.0"))
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_PUBLISH_RETRY = True
CELERY_TASK_PUBLISH_RETRY_POLICY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.2}
CELERY_BROKER_TRANSPORT_OPTIONS |= {"socket_connect_timeout": FRUXON_REDIS_CONNECT_TIMEOUT * 10,
                                    "socket_timeout": 2.0, "retry_on_timeout": False}
CELERY_BEAT_SCHEDULE["fruxon-outbox-sweep"] = {"task": "fruxon.outbox.sweep", "schedule": 10.0}
FRUXON_OUTBOX_LEASE_SECONDS = int(os.environ.get("FRUXON_OUTBOX_LEASE_SECONDS", "30"))

# --- Observability: /healthz, /readyz, /metrics, OTLP traces (issue 14 items 3 and 4) ------------
# fruxon.operations answers the three paths before sessions, host checks and authentication (no
# database or Redis touched by Django). /readyz waits this long for each of PostgreSQL and Redis.
FRUXON_READINESS_TIMEOUT_SECONDS = float(os.environ.get("FRUXON_READINESS_TIMEOUT_SECONDS", "1"))
MIDDLEWARE.insert(MIDDLEWARE.index("django.contrib.sessions.middleware.SessionMiddleware"),
                  "fruxon.operations.OperationsMiddleware")
# Probes and scrapers often speak plain HTTP to a pod: no redirect to HTTPS on these paths.
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
# /metrics is off (404) and nothing is recorded unless this is set; then it needs "Authorization:
# Bearer <token>". Several worker processes share PROMETHEUS_MULTIPROC_DIR (gunicorn.conf.py sets
# it up); see monitoring.observability and docs/observability.md.
FRUXON_METRICS_TOKEN = os.environ.get("FRUXON_METRICS_TOKEN", "")
# Runs are exported as OTLP traces when OTEL_EXPORTER_OTLP_ENDPOINT (or ..._TRACES_ENDPOINT) is set,
# with the standard OTEL_* variables (headers, timeout, service name). Prompts, completions, tool
# arguments and results are left out unless this opt-in is on. Runs waiting for export beyond
# FRUXON_OTEL_QUEUE_SIZE per process are dropped (counted), never slowing an execute down.
FRUXON_OTEL_CAPTURE_CONTENT = env_bool("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", False)
FRUXON_OTEL_QUEUE_SIZE = int(os.environ.get("FRUXON_OTEL_QUEUE_SIZE", "2048"))

# --- Rate limits (issue 14 item 1) ----------------------------------------------------------------
# Limits per org and per API key live in the database (GET/PUT /v1/{tenant}/rate-limits, rateLimits on keys);
# the counting is on Redis (fruxon.ratelimit): FRUXON_RATELIMIT_REDIS_URL, else REDIS_URL; without either,
# limits are not enforced (logged). While Redis is unreachable limits fail open: each check waits at most
# FRUXON_RATELIMIT_TIMEOUT_MS; after a refused connection or three timeouts in a row Redis is skipped for
# FRUXON_RATELIMIT_BREAKER_SECONDS, and the outage is
# logged at most once per FRUXON_RATELIMIT_LOG_INTERVAL_SECONDS per process.
FRUXON_RATELIMIT_REDIS_URL = os.environ.get("FRUXON_RATELIMIT_REDIS_URL", "")
FRUXON_RATELIMIT_TIMEOUT_MS = float(os.environ.get("FRUXON_RATELIMIT_TIMEOUT_MS", "50"))
FRUXON_RATELIMIT_BREAKER_SECONDS = float(os.environ.get("FRUXON_RATELIMIT_BREAKER_SECONDS", "5"))
FRUXON_RATELIMIT_LOG_INTERVAL_SECONDS = float(os.environ.get("FRUXON_RATELIMIT_LOG_INTERVAL_SECONDS", "60"))
# Tests only (honoured only with FRUXON_TESTING): the limiter's clock is this Redis key's value (ms), so a test
# drives the time of every server process at once.
FRUXON_RATELIMIT_CLOCK_KEY = os.environ.get("FRUXON_RATELIMIT_CLOCK_KEY", "")

# --- The async execute family (issue 13; DESIGN "The execute hot path") ---------------------------
# Under the ASGI server, execute and its stream run on the event loop: no thread per execution.
# FRUXON_MAX_IN_FLIGHT executions per server process at most (streams included); one more is answered
# at once with 503 overloaded and Retry-After. The README runs 2 processes: 2,000 in flight per box.
FRUXON_MAX_IN_FLIGHT = int(os.environ.get("FRUXON_MAX_IN_FLIGHT", "1000"))
FRUXON_OVERLOAD_RETRY_AFTER = int(os.environ.get("FRUXON_OVERLOAD_RETRY_AFTER", "1"))
# How the execute family reaches PostgreSQL (fruxon.adb): "pool" (psycopg's AsyncConnectionPool, the
# default on PostgreSQL) or "thread" (Django's connection through a thread: SQLite, tests in a transaction).
FRUXON_ASYNC_DB = os.environ.get("FRUXON_ASYNC_DB", "")
FRUXON_ASYNC_DB_POOL_SIZE = int(os.environ.get("FRUXON_ASYNC_DB_POOL_SIZE", "16"))
FRUXON_ASYNC_DB_POOL_TIMEOUT = float(os.environ.get("FRUXON_ASYNC_DB_POOL_TIMEOUT", "5"))
# A finished run's record waits this long for a free connection under load (an outage fails it at once).
FRUXON_RUN_RECORD_TIMEOUT = float(os.environ.get("FRUXON_RUN_RECORD_TIMEOUT", "30"))
# Threads per process for the sync ORM work an execute sometimes needs (secrets, sub-agents, conversations).
FRUXON_ASYNC_DB_THREADS = int(os.environ.get("FRUXON_ASYNC_DB_THREADS", "8"))
