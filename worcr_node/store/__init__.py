"""Storage seam: PostgreSQL (truth) and Redis (rebuildable index). Only this package imports
asyncpg and redis."""
