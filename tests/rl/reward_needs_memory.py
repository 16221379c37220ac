"""A module that cannot be imported under an address-space limit (RLIMIT_AS), as a reward module or a verifier
too large for reward_pool.memory_mb: it allocates the whole limit. Without a limit (the trainer's own process,
which imports reward_pool.import_modules to check them) it allocates nothing."""

import resource

_limit = resource.getrlimit(resource.RLIMIT_AS)[0]
if _limit != resource.RLIM_INFINITY:
    _held = bytearray(_limit)
