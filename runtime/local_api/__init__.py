"""The embedded local ``/v1`` API: what ``rymi-worker dev`` serves when no API is configured.

``store.LocalStore`` keeps agents, calls, events, transcripts and keys in SQLite;
``app.add_local_api_routes`` mounts the HTTP routes (docs/api.md) on an aiohttp app.
"""
