"""The backend half: ``crosstrace serve`` (ingest, store, query API).

The library half (everything outside this package) never imports from here.
"""
