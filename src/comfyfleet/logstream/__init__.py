"""Remote log following over SSH: exactly-once, checkpointed, sub-second.

The fleet imports from here::

    result = await follow(FollowTarget(SshTarget("10.0.0.5", 22), "/root/provision.log",
                                       Path("host1.log")), FollowOptions(timeout=3600))
"""

from comfyfleet.logstream.follower import FollowOptions, FollowResult, FollowTarget, follow
from comfyfleet.logstream.markers import MarkerSet
from comfyfleet.logstream.remote import ReadTuning, SshTarget

__all__ = [
    "FollowOptions",
    "FollowResult",
    "FollowTarget",
    "MarkerSet",
    "ReadTuning",
    "SshTarget",
    "follow",
]
