"""gunicorn's configuration, read from the working directory (the README's ``gunicorn fruxon.asgi:application ...``
from the project root).

It prepares /metrics for several worker processes (docs/observability.md): when
``FRUXON_METRICS_TOKEN`` is set, every worker writes its metrics to
``PROMETHEUS_MULTIPROC_DIR`` and a scrape sums them all.

* The directory is the operator's ``PROMETHEUS_MULTIPROC_DIR``, or else a fresh
  temporary one, removed when gunicorn exits.
* At start, files left by processes that are no longer alive (a previous server)
  are removed, so counters start from zero with the server; files of live
  processes (e.g. a Celery worker sharing the directory) are kept.
* When a worker exits, its live gauges are dropped (``mark_process_dead``); its
  counters and histograms stay counted, so totals never go backwards while the
  server runs.

The variable is set here, at configuration time in the master, before any worker
imports prometheus_client (which picks its value store at import): with or
without ``--preload``. A configuration reload (HUP) keeps the directory.
"""
import os
import re
import shutil
import tempfile


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _prepare_metrics_dir():
    if not os.environ.get("FRUXON_METRICS_TOKEN"):
        return
    if os.environ.get("FRUXON_METRICS_DIR_MASTER") == str(os.getpid()):
        return  # a reload of this server's configuration: the directory is in use
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if path:
        os.makedirs(path, exist_ok=True)
        for name in os.listdir(path):
            found = re.fullmatch(r".+_(\d+)\.db", name)
            if found and not _alive(int(found.group(1))):
                os.remove(os.path.join(path, name))
    else:
        path = tempfile.mkdtemp(prefix="fruxon-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = os.environ["FRUXON_METRICS_DIR_CREATED"] = path
    os.environ["FRUXON_METRICS_DIR_MASTER"] = str(os.getpid())


_prepare_metrics_dir()

# Client addresses: the application alone decides whom to believe about X-Forwarded-For
# (FRUXON_TRUSTED_PROXIES, used by the login throttle). gunicorn's default would make the uvicorn
# worker rewrite the client address from that header for connections from 127.0.0.1, before the
# application sees the request.
forwarded_allow_ips = ""

# Idle keep-alive connections stay open 75 s (gunicorn's default is 2 s): longer than the idle timeout
# of the load balancers and client pools in front (60 s is common), so it is never the server that
# closes a connection the moment a client reuses it for a request (a POST is not retried).
keepalive = 75


def child_exit(server, worker):
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    created = os.environ.get("FRUXON_METRICS_DIR_CREATED")
    if created and os.environ.get("FRUXON_METRICS_DIR_MASTER") == str(os.getpid()):
        shutil.rmtree(created, ignore_errors=True)
