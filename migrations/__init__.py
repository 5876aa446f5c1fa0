"""Alembic's scripts, shipped with the package as service.migrations (see pyproject.toml's package-dir).

Nothing imports this package for its code: service.store.db asks the import system where it is, so the
same lookup finds the repository's migrations/ in a checkout and site-packages/service/migrations in a
wheel install. alembic.ini (for `alembic` by hand) points at this directory directly.
"""
