"""partnerhub metrics service."""
