"""I/O edges: WeChat API client, push receiver, SQLite store."""
