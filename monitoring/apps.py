from django.apps import AppConfig


class MonitoringConfig(AppConfig):
    name = "monitoring"

    def ready(self) -> None:
        from . import pricing  # noqa: F401  (connects the price-cache invalidation signals)
