"""
The tools around raftkv, beside the product: C{raftkv cluster} (L{cluster}),
C{raftkv bench} (L{bench}, with L{pysyncobj_bench}), C{raftkv chaos}
(L{chaos}), C{raftkv sim} (L{sim}) and C{raftkv certs} (L{certs}, TLS
certificates).  Every node process they, the
C{bench/*.py} scripts and the tests start comes from L{launcher}.
"""
