"""Provider adapters, one module per provider, behind :mod:`router_jobs.providers.base`."""
