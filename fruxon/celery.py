"""The Celery app.

With ``REDIS_URL`` set, tasks go to Redis and a real worker and beat run them.
Without it, tasks run eagerly in-process (``task_always_eager``), so the demo
works on a bare machine with no broker.
"""
import os

from celery import Celery
from celery.signals import after_setup_logger, after_setup_task_logger

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fruxon.settings")

app = Celery("fruxon")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@after_setup_logger.connect
@after_setup_task_logger.connect
def _redact_worker_logs(logger=None, **kwargs) -> None:
    """A worker replaces the root handlers with its own: they get the secrets filter too (fruxon.log_redaction)."""
    from fruxon.log_redaction import install, install_everywhere

    if logger is not None:
        install(logger.handlers)
    install_everywhere()
