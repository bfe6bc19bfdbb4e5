"""Operator start-up: kopf settings and the shared runtime."""

from __future__ import annotations

import logging
from typing import Any

import kopf

from ..api import constants as c
from .runtime import reset


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    reset()
    # Only our explicit, transition-based Events are posted; kopf's log lines stay in the log.
    settings.posting.level = logging.CRITICAL + 10
    # kopf keeps its bookkeeping in annotations with our prefix, never in status (the schema prunes it).
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=c.GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=c.GROUP, key="last-handled-configuration")
    settings.persistence.finalizer = c.FINALIZER
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 30
    settings.queueing.worker_limit = 64
