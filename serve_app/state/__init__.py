"""The app's shared state: one SQL store (serve_app/state/store.py) for release history, audit, API keys and
rate-limit buckets."""
