"""The command line, ``python -m fastbptt``: ``demo``, ``bench`` and ``diagnose`` (``main`` parses the arguments)."""
