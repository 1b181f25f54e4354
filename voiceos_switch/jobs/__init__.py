"""After the call: the Celery app, its tasks, and the outbox that feeds them."""
