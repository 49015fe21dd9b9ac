"""The notify REST API under ``/api/`` (contract: docs/notify-api.md, schema: ``/api/openapi.json``).

Plain Django function views with JSON in and out: ``http`` holds the shared checks (methods,
sizes, content types, bearer keys, rate limits, idempotency), ``validation`` the body parsers,
``views`` the endpoints, which call ``notifications.services``.
"""
