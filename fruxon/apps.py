from django.apps import AppConfig


class FruxonConfig(AppConfig):
    name = "fruxon"
    verbose_name = "Fruxon"

    def ready(self) -> None:
        from fruxon import converters  # noqa: F401  (registers the "name" URL converter)
        from fruxon.api import schema  # noqa: F401  (registers OpenAPI auth extensions)
        from fruxon.log_redaction import install_everywhere

        install_everywhere()  # secrets out of every handler configured so far (Django's defaults, a server's own)
        from fruxon import egress

        egress.configure_from_settings()  # the outbound-call policy (FRUXON_EGRESS_ALLOW)
