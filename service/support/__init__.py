"""Helpers with no domain knowledge: nothing here imports from `service` (images, AWS and SQL live elsewhere)."""
