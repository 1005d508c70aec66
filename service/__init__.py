"""flagpost's I/O shell around the ``rules`` core: the command line (and, next, the server)."""
