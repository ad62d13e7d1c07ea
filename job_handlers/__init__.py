"""Handler workers: the procrastinate tasks that act on the jobs the consumer enqueues."""
