"""The state store's tables, as SQLAlchemy Core sees them (the queries' view). The schema itself is made and
changed only by the migrations in serve_app/state/migrations, which spell each table out as it was at their
revision; a change here goes with a new migration."""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Float, Index, Integer, MetaData, String, Table, Text

metadata = MetaData()

releases = Table(
    "releases", metadata,
    Column("n", Integer, primary_key=True, autoincrement=False),  # numbered by the history (release/history.py)
    Column("created_at", Float, nullable=False),
    Column("finished_at", Float),
    Column("actor", Text, nullable=False),
    Column("kind", String(32), nullable=False),
    Column("note", Text),
    Column("config", Text, nullable=False),     # the whole Serve config (JSON)
    Column("changed", Text, nullable=False),    # what differs from the release it replaced (JSON list)
    Column("status", String(40), nullable=False),
    Column("outcome", Text),
    Column("rolled_back_to", Integer),
    Column("schema_version", Integer, nullable=False, server_default="1"),  # of the config (config/versions.py)
    Column("scope", String(160), nullable=False, server_default="app"),    # what it changes (release/scopes.py)
)

audit = Table(
    "audit", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", Float, nullable=False),
    Column("actor", Text, nullable=False),
    Column("action", Text, nullable=False),
    Column("allowed", Integer, nullable=False),
    Column("detail", Text),
    Index("audit_at", "at"),
)

api_keys = Table(
    "api_keys", metadata,
    Column("sha256", String(64), primary_key=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("tenant", String(64), nullable=False),
    Column("scopes", Text, nullable=False),        # JSON list
    Column("models", Text),                        # JSON list; NULL: every model
    Column("requests_per_minute", Float),
    Column("tokens_per_minute", Float),
    Column("source", String(16), nullable=False),  # "api" (admin API / CLI) or "file" (seeded from the key file)
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("revoked_at", Float),
)

# Change counters: a reader polls one row instead of a table ("keys": bumped by every key write).
versions = Table(
    "state_versions", metadata,
    Column("name", String(32), primary_key=True),
    Column("n", Integer, nullable=False),
)

# Every ingress replica's token buckets of a key, shared: level and time of the last refill.
rate_buckets = Table(
    "rate_buckets", metadata,
    Column("key", String(64), primary_key=True),   # the key's sha256
    Column("kind", String(16), primary_key=True),  # "requests" | "tokens"
    Column("level", Float, nullable=False),
    Column("stamp", Float, nullable=False),
)

# Stored responses of the Responses API (state/responses.py): the response object as answered, and every item
# its model call saw as input (the chain before it included), which a follow-up continues from.
responses = Table(
    "responses", metadata,
    Column("id", String(64), primary_key=True),
    Column("tenant", String(64), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("body", Text, nullable=False),          # the response object (JSON)
    Column("input_items", Text, nullable=False),   # JSON list of items
    Index("responses_created_at", "created_at"),
)

conversations = Table(
    "conversations", metadata,
    Column("id", String(64), primary_key=True),
    Column("tenant", String(64), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("metadata", Text, nullable=False),      # JSON object
)

# Files uploaded through /v1/files (state/files.py): what each became, so its status reads the same on every
# ingress replica.
files = Table(
    "files", metadata,
    Column("id", String(64), primary_key=True),
    Column("tenant", String(64), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("filename", String(256), nullable=False),
    Column("bytes", BigInteger, nullable=False),
    Column("kind", String(16), nullable=False),
    Column("document_id", String(256), nullable=False),
    Column("status", String(16), nullable=False),  # uploaded | processed | error
    Column("details", Text, nullable=False),       # JSON: chunks, or the error (status, message)
    Index("files_tenant_created", "tenant", "created_at"),
)

# A conversation's items in the order they were added (``n``, increasing across the store).
conversation_items = Table(
    "conversation_items", metadata,
    # 64 bits (SQLite's INTEGER is; its rowid alias must be spelled INTEGER to count by itself).
    Column("n", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("conversation_id", String(64), nullable=False),
    Column("id", String(64), nullable=False),      # the item's id (a client may add one twice)
    Column("created_at", Float, nullable=False),
    Column("item", Text, nullable=False),          # the item (JSON)
    Index("conversation_items_conversation", "conversation_id", "n"),
    Index("conversation_items_id", "conversation_id", "id"),
)
