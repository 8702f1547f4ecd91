"""What a user's request to erase does: every session of a tenant, at once."""
from __future__ import annotations

from optimem.errors import NotFound

ROUNDS = 5   # sessions created while a delete runs are deleted in another round, a few times at most


def delete_tenant(memory, tenant: str) -> int:
    """Delete every session of ``tenant`` (only its keys: each session's keys carry the tenant in
    their hash tag) and return how many were deleted. Sessions another caller creates meanwhile
    are caught by the next round; one created after the last round stays."""
    deleted = 0
    for _ in range(ROUNDS):
        sessions = memory.sessions(tenant=tenant)
        if not sessions:
            break
        for session in sessions:
            try:
                memory.delete_session(session, tenant=tenant)
                deleted += 1
            except NotFound:   # deleted by someone else meanwhile
                pass
    return deleted
