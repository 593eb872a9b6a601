"""Standard Webhooks: partners' endpoints, the dispatcher and isolated delivery workers."""
