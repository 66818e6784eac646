"""The measurement core shared by every domain: the one history schema (:mod:`.history`), the one
event and norm extraction and regime vocabulary (:mod:`.events`), the training-loop skeleton
(:mod:`.loop`), devices and determinism (:mod:`.device`), atomic result files (:mod:`.io`), code
fingerprints (:mod:`.fingerprint`) and provenance (:mod:`.provenance`).

Nothing here imports a domain or the science layer.
"""
