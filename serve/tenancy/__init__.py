"""Tenants: API keys (hashed), per-key limits, the cache salt that namespaces each tenant's prefix
cache, and the audit log. Pure Python: no HTTP, no torch; the HTTP glue is serve/api/tenancy.py."""
