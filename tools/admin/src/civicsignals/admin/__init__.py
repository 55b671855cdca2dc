"""civicsignals-admin: tenant folders (validate, diff, new) and API keys (create, list, rotate, revoke)."""
