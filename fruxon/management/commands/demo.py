"""``manage.py demo``: migrate, seed a demo org, print credentials, serve on 127.0.0.1:8000.

Runs on SQLite with no Redis (Celery eager). ``--no-serve`` only seeds.
"""
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand

from fruxon import demo


class Command(BaseCommand):
    help = "Migrate, seed the demo organization and serve the API and admin on 127.0.0.1:8000."

    def add_arguments(self, parser):
        parser.add_argument("--addrport", default="127.0.0.1:8000")
        parser.add_argument("--no-serve", action="store_true", help="Seed and exit.")

    def handle(self, *args, addrport: str, no_serve: bool, **options):
        call_command("migrate", interactive=False, verbosity=0)
        demo.allow_demo_egress()  # its example integration is this server (127.0.0.1:8000)
        seeded = demo.seed()
        base = f"http://{addrport}"
        lines = [
            "",
            f"Fruxon demo: organization '{seeded.org.slug}'",
            f"  admin:   {base}/admin/",
            f"  API:     {base}/v1/orgs   docs: {base}/v1/docs",
            "  people (username / password, role):",
            *[f"    {name} / {password}  ({name})" for name, password in seeded.users.items()],
            f"  API key (admin scopes): {seeded.api_key}",
            f"  try:     curl -H 'X-API-KEY: {seeded.api_key}' {base}/v1/{seeded.org.slug}/integrations",
            "",
        ]
        self.stdout.write("\n".join(lines))
        if not no_serve:
            if settings.CELERY_TASK_ALWAYS_EAGER:
                from fruxon import ticker

                ticker.start()  # scheduled rollouts and auto-rollback without a beat process
            # The ASGI application, as in production (fruxon.asgi): streamed executes arrive as they run.
            import uvicorn

            from fruxon.asgi import application

            host, _, port = addrport.rpartition(":")
            uvicorn.run(application, host=host or "127.0.0.1", port=int(port), lifespan="off", log_level="info")
