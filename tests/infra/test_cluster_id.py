"""Unit test: the local broker's cluster id is never taken for a command-line option."""

from __future__ import annotations

import base64

from infra.stack.kafka import new_cluster_id


def test_cluster_ids_are_16_bytes_and_never_start_with_a_dash() -> None:
    # One random id in 64 would start with "-"; a few thousand draws meet many such.
    ids = [new_cluster_id() for _ in range(5000)]
    assert not [i for i in ids if i.startswith("-")]
    assert all(len(base64.urlsafe_b64decode(i + "==")) == 16 for i in ids)
    assert len(set(ids)) == len(ids)
