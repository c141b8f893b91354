"""vfence tests."""

LOOPBACK = "http://127.0.0.1"  # the Host an API without a token answers (no DNS rebinding)
