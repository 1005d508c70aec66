"""Visitors: data an app adds about a visitor, kept for targeting, in memory or in Redis.

    items.py        checks the items of a request (400 naming the field)
    records.py      a visitor's record and its targeting attributes (pure)
    changes.py      what each write does to the records (pure, shared by the stores)
    stores.py       the ``VisitorStore`` interface and the in-memory store
    redis_store.py  the store shared by every worker and replica
    routes.py       the HTTP routes

Errors: ``StoreUnavailable`` (503 STORE_UNAVAILABLE), an ``ApiError``; bad items are
``ApiError`` 400 INVALID_REQUEST.
"""
