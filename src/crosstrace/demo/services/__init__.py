"""The demo cloud's services, one module each, wired together by
:mod:`crosstrace.demo.cloud`:

- :mod:`~crosstrace.demo.services.compute_api`: the compute API (WSGI);
- :mod:`~crosstrace.demo.services.image`: the image service (ASGI);
- :mod:`~crosstrace.demo.services.network`: the network service (ASGI);
- :mod:`~crosstrace.demo.services.volume`: the volume service (WSGI, SQL);
- :mod:`~crosstrace.demo.services.scheduler`: the scheduler worker (RPC);
- :mod:`~crosstrace.demo.services.compute`: the compute workers (RPC);
- :mod:`~crosstrace.demo.services.base`: what they share.
"""
