"""Branches of a conversation: editing an earlier user message or regenerating a reply keeps what was there.

``session.messages`` is always the active branch (what the model sees, what export and search read first);
the other branches live in ``session.alternatives``, each message with the ``parent`` id it follows (``""``
for the start of the conversation). A branch point is a position ``k`` of the active branch whose parent
(the message before it) has other children in ``alternatives``. Forking at ``k`` moves ``messages[k:]``
into ``alternatives``; switching at ``k`` forks and then follows the chosen child down, at each step taking
the child that was active last (the one moved into ``alternatives`` last). All functions change the session
in place; the caller saves it.
"""

from __future__ import annotations

from mlx_harmony_tui.sessions.schema import Message, Session

START = ""  # the parent of a first message


def parent_at(session: Session, k: int) -> str:
    """The id the message at position ``k`` follows."""
    return session.messages[k - 1].id if k > 0 else START


def fork(session: Session, k: int) -> list[Message]:
    """Move ``messages[k:]`` into ``alternatives`` (their parents made explicit); returns what was moved."""
    tail = session.messages[k:]
    del session.messages[k:]
    prev = parent_at(session, k)
    for m in tail:
        m.parent = prev
        prev = m.id
    session.alternatives.extend(tail)
    return tail


def siblings(session: Session, k: int) -> list[str]:
    """Ids of the messages that can stand at position ``k``, oldest first (the active one included)."""
    parent = parent_at(session, k)
    heads = [m for m in session.alternatives if m.parent == parent]
    if k < len(session.messages):
        heads.append(session.messages[k])
    heads.sort(key=lambda m: (m.created_at, m.id))
    return [m.id for m in heads]


def branch_points(session: Session) -> dict[int, tuple[int, int]]:
    """Position -> (1-based number of the active branch, number of branches), for every position with
    more than one; a position at the end (after an edit was taken back) counts too, with number 0."""
    children: dict[str, int] = {}
    for m in session.alternatives:
        children[m.parent or START] = children.get(m.parent or START, 0) + 1
    out: dict[int, tuple[int, int]] = {}
    for k in range(len(session.messages) + 1):
        if children.get(parent_at(session, k)):
            ids = siblings(session, k)
            active = ids.index(session.messages[k].id) + 1 if k < len(session.messages) else 0
            out[k] = (active, len(ids))
    return out


def switch(session: Session, k: int, head_id: str) -> None:
    """Make the branch starting with ``head_id`` (a sibling at ``k``) the active one from ``k`` on."""
    if k < len(session.messages) and session.messages[k].id == head_id:
        return
    if head_id not in siblings(session, k):
        raise ValueError(f"{head_id} is not a branch at position {k}")
    fork(session, k)
    by_id = {m.id: m for m in session.alternatives}
    current: Message | None = by_id[head_id]
    while current is not None:
        session.alternatives.remove(current)
        current.parent = None
        session.messages.append(current)
        children = [m for m in session.alternatives if m.parent == current.id]
        current = children[-1] if children else None  # the child that was active last


def flip(session: Session, k: int, step: int = 1) -> bool:
    """Switch position ``k`` to the next (``step`` 1) or previous (-1) branch, wrapping; False if none."""
    ids = siblings(session, k)
    if len(ids) < 2 and not (ids and k >= len(session.messages)):
        return False
    active = ids.index(session.messages[k].id) if k < len(session.messages) else -1 if step > 0 else 0
    switch(session, k, ids[(active + step) % len(ids)])
    return True
