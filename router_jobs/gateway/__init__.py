"""An OpenAI-compatible HTTP gateway over the queue.

Existing code that speaks the OpenAI HTTP API gets the pool's exact capacity, backpressure
and key rotation by changing only its base URL. Modules:

* :mod:`~router_jobs.gateway.app`: the ASGI app (routes, OpenAI error envelope, health, metrics);
* :mod:`~router_jobs.gateway.routes_chat`, :mod:`~router_jobs.gateway.routes_files`,
  :mod:`~router_jobs.gateway.routes_batches`: the routes, one module per resource;
* :mod:`~router_jobs.gateway.tokens`: virtual keys (bearer tokens stored hashed in Redis);
* :mod:`~router_jobs.gateway.files`: uploads and batch outputs, in Redis with an expiry;
* :mod:`~router_jobs.gateway.batches`, :mod:`~router_jobs.gateway.driver`: batch records and
  the lease-holding driver that runs them over the library's batch runner;
* :mod:`~router_jobs.gateway.streaming`, :mod:`~router_jobs.gateway.openai_format`: SSE chunks
  and OpenAI's objects from job results.
"""
