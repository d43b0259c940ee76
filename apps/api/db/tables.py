"""The schema, as SQLAlchemy Core tables. Alembic's migrations create it; this module is what the
store queries and what ``alembic revision --autogenerate`` compares the database with."""

from __future__ import annotations

from sqlalchemy import Column, DateTime, ForeignKey, Index, MetaData, String, Table, Text, Uuid

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

projects = Table(
    "projects",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("name", String(200), nullable=False),
    Column("description", Text, nullable=True),
    Column("repository_url", String(2048), nullable=True),
    # ``host/owner/name`` of repository_url (apps.api.github.events.normalize_repository): what a
    # webhook delivery is matched on, whatever form of the URL GitHub sends
    Column("repository_key", String(2048), nullable=True, index=True),
    Column("status", String(50), nullable=False),
    Column("owner_id", Uuid, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Index("ix_projects_created_at_id", "created_at", "id"),
)

project_members = Table(
    "project_members",
    metadata,
    Column("project_id", Uuid, ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True),
    Column("user_id", Uuid, primary_key=True, index=True),
    Column("role", String(20), nullable=False),  # "owner" or "member"
    Column("added_at", DateTime(timezone=True), nullable=False),
)

# Requests already handled, so that a retry does not publish twice: GitHub deliveries
# (``kind`` "github", ``key`` the X-GitHub-Delivery id) and publishes with an Idempotency-Key
# (``kind`` "publish:<caller>").
handled_requests = Table(
    "handled_requests",
    metadata,
    Column("kind", String(100), primary_key=True),
    Column("key", String(255), primary_key=True),
    Column("fingerprint", String(64), nullable=False),  # sha256 of the request body
    Column("result", Text, nullable=False),  # JSON: what the first request was answered
    Column("created_at", DateTime(timezone=True), nullable=False, index=True),
)
