"""Champion and Challenger on one server: a sticky traffic split, or the Challenger in the shadow.

A request goes to the Challenger when the hash of its key falls in the Challenger's share. The key
is the client's ``X-Request-Key`` header, else the request body: a retried request lands on the
same arm. In the shadow, every request is answered by the Champion and scored by the Challenger
too; both rows go to the log under the same request ids, so the comparison can pair them.
"""
import hashlib
from dataclasses import dataclass

from mlops.errors import ConfigError
from mlops.inference.engine import CHALLENGER_ARM, CHAMPION_ARM


@dataclass(frozen=True)
class TrafficSplit:
    """The Challenger's share of requests in percent, or the Challenger scoring every request unseen."""

    challenger_percent: int = 0
    shadow: bool = False

    def __post_init__(self):
        if not 0 <= self.challenger_percent <= 100:
            raise ConfigError(f"--challenger-percent must be from 0 to 100, got {self.challenger_percent}")
        if self.shadow and self.challenger_percent:
            raise ConfigError("--shadow answers every request with the Champion; leave out "
                              "--challenger-percent, or drop --shadow to split the traffic")

    @property
    def active(self) -> bool:
        return self.shadow or self.challenger_percent > 0

    def arm_for(self, key: bytes) -> str:
        """The arm that answers the request with ``key``; the same key always gets the same arm."""
        if self.shadow or not self.challenger_percent:
            return CHAMPION_ARM
        bucket = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") % 100
        return CHALLENGER_ARM if bucket < self.challenger_percent else CHAMPION_ARM
