"""The repom demo service: a small bank and a blog behind one FastAPI application.

* :mod:`.models` -- users with profiles, accounts, transfers, articles (repom mixins and types)
* :mod:`.repositories` -- one ``AsyncRepository`` per model, with filter/order whitelists
* :mod:`.services` -- the unit-of-work functions (``@transactional``)
* :mod:`.api` / :mod:`.app` -- the HTTP API (``create_app()``)
* ``migrations/`` -- Alembic migrations (``alembic.ini`` next to this file, made with ``repom db``)
* :mod:`.bootstrap` -- ``migrate()`` and ``seed()``
* :mod:`.scenario` -- the scripted client and its checks (the money invariant)
* :mod:`.demo` -- ``python -m examples.bank_blog.demo``: migrate, seed, drive the API, summarise
"""
