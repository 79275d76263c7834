"""State store: SQLAlchemy 2 async tables, repositories and Alembic migrations.

SQLite (WAL) in the data dir by default, PostgreSQL when ``CORRAL_DATABASE_URL`` says so. The
store is the truth for organizations, quota usage, agents, tasks, secrets and audit; tables
here are not API schemas — repositories return domain values.
"""
