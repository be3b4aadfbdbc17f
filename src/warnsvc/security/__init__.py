"""Security helpers: the SSRF guard for outgoing webhook requests, and partner API keys."""
