from django.apps import AppConfig
from django.db.backends.signals import connection_created


class CoreConfig(AppConfig):
    name = "core"
    verbose_name = "Outbox"

    def ready(self) -> None:
        from core.sqlite import on_connection_created

        connection_created.connect(on_connection_created, dispatch_uid="core.sqlite")
