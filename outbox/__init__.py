"""The transactional outbox: its table, the writer used inside a unit of work, and the relay."""
