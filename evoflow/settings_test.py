"""Settings for the test suite: the normal settings with local secrets and fast hashing.

Subprocesses a test starts (workers, commands, servers) use this module too, through
DJANGO_SETTINGS_MODULE, so they see the same test database.
"""

import os

os.environ.setdefault("DEBUG", "1")
os.environ.setdefault("LOG_FORMAT", "text")
# Throttling stays on, as in production, with rates no test reaches by accident; the throttling
# tests lower them for their own requests.
os.environ.setdefault("API_THROTTLE_ANON_RATE", "100000/min")
os.environ.setdefault("API_THROTTLE_USER_RATE", "100000/min")

from evoflow.settings import *  # noqa: E402, F403
from evoflow.settings import Q_CLUSTER  # noqa: E402

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
Q_CLUSTER["poll"] = 0.05
