"""Chain access for the ENS handlers: a guarded JSON-RPC provider (shared rate limit, retries,
circuit breaker, request counts), ENS name helpers, record lookup and true-owner lookup."""
