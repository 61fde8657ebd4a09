"""The dead-letter queue: record format, reading, replay and the DLQ agent."""
