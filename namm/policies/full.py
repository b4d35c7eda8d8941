"""Full cache: never evicts. The reference every other policy is compared with."""
from .base import Policy


class FullCache(Policy):
    name = "full"
    evicts = False

    def __init__(self, budget=None):
        super().__init__(None)  # a budget means nothing without eviction
