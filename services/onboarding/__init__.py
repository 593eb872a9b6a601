"""partnerhub onboarding service."""
