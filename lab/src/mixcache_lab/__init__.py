"""mixcache-lab: the harness around the mixcache library.

The ``mixcache`` command line (:mod:`mixcache_lab.cli`, entry point :mod:`mixcache_lab._entry`),
the two small trained bundled models with their training and evaluation code
(:mod:`mixcache_lab.bundled`), the benchmark (:mod:`mixcache_lab.bench`), the tiny random-weight
pipelines the tests build from configs (:mod:`mixcache_lab.tiny`) and the soak run
(:mod:`mixcache_lab.soak`). The library itself, ``mixcache``, never imports this package.
"""
