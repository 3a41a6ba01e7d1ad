"""Training and validation data: the source manifest and fetch, dataset loaders, synthetic tumours, synthesis.

Submodules are imported on demand so that ``fetch-data`` does not pay for importing torch and torchio.
"""
