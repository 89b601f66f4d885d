"""redis_changes.py: which servers a change feed must hear. The feeds themselves run against real servers in
test_vault.py (one Redis), test_store_sentinel.py and test_store_cluster.py."""

from __future__ import annotations

from splittoken.redis_changes import masters_in

# CLUSTER NODES as Redis 7 answers it (https://redis.io/docs/latest/commands/cluster-nodes/), and the
# states a feed meets: a promoted replica's old master (failed, no slots), a failed master that keeps its
# slots (no replica to take over), a master that just joined (no slots yet).
NODES = b"""\
07c37dfe 127.0.0.1:30004@31004,host4 slave e7d1eecc 0 1426238317239 4 connected
67ed2db8 127.0.0.1:30002@31002,host2 master - 0 1426238316232 2 connected 5461-10922
292f8b36 127.0.0.1:30003@31003 master - 0 1426238318243 3 connected 10923-16383
e7d1eecc 127.0.0.1:30001@31001 myself,master - 0 0 1 connected 0-5460
aaaaaaaa 127.0.0.1:30007@31007 master,fail - 1426238316232 1426238316232 7 disconnected
bbbbbbbb 127.0.0.1:30008@31008 master,fail - 1426238316232 1426238316232 8 disconnected 100-200
cccccccc 127.0.0.1:30009@31009 master - 0 1426238316232 9 connected
dddddddd 127.0.0.1:30010@31010 master,fail? - 0 1426238316232 10 connected 201-300
eeeeeeee [::1]:30011@31011 master - 0 1426238316232 11 connected 301-400
ffffffff 2001:db8::7:30012@31012 master - 0 1426238316232 12 connected 401-500
"""


def test_masters_that_may_take_writes_are_the_ones_a_feed_must_hear() -> None:
    assert masters_in(NODES) == {
        ("127.0.0.1", 30001), ("127.0.0.1", 30002), ("127.0.0.1", 30003),
        ("127.0.0.1", 30008),  # failed, but its slots are still its own: nobody else takes those writes
        ("127.0.0.1", 30009),  # no slots yet: the feed hears it before anything moves there
        ("127.0.0.1", 30010),  # only suspected
        ("::1", 30011), ("2001:db8::7", 30012),
    }  # fmt: skip


def test_replicas_and_failed_masters_without_slots_are_not_heard() -> None:
    assert not masters_in(
        "07c37dfe 127.0.0.1:30004@31004 slave e7d1eecc 0 1 4 connected\n"
        "aaaaaaaa 127.0.0.1:30007@31007 master,fail - 1 1 7 disconnected\n"
    )
