"""partnerhub lifecycle service."""
