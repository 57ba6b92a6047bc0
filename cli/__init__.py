"""``routerctl``: the operator's command line, a thin click layer over router_jobs."""
