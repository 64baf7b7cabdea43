"""The reference sync server: one server core, storage on memory, SQLite or PostgreSQL."""
