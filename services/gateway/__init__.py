"""partnerhub gateway service."""
