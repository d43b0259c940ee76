"""The relational database: projects, their members, and what must survive a restart (GitHub
deliveries and publish idempotency keys already handled).

SQLite (a file, through aiosqlite) by default; any other SQLAlchemy async URL in
``DATABASE_URL`` (PostgreSQL through asyncpg in production). The schema is Alembic's
(``apps/api/db/migrations``): ``python -m apps.api.db upgrade`` applies it, and the service
applies it at start-up (``DATABASE_MIGRATE_ON_START``), one instance at a time.
"""
