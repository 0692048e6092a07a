"""The Celery app.

With ``REDIS_URL`` set, tasks go to Redis and a real worker and beat run them.
Without it, tasks run eagerly in-process (``task_always_eager``), so the demo
works on a bare machine with no broker.
"""
import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fruxon.settings")

app = Celery("fruxon")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
