"""partnerhub services: gateway, onboarding, lifecycle, metrics, and their shared runtime."""
