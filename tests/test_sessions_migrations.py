"""Migration chain: every fixture version reaches the current schema; each step is pure and meaningful."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from mlx_harmony_tui.sessions.migrations import MIGRATIONS, SessionVersionError, migrate, v1_to_v2, v2_to_v3
from mlx_harmony_tui.sessions.schema import SCHEMA_VERSION, SchemaError, session_from_dict, session_to_dict

FIXTURES = Path(__file__).resolve().parents[1] / "sessions"


def fixture(version: int) -> dict:
    return json.loads((FIXTURES / f"v{version}-example.json").read_text(encoding="utf-8"))


def test_one_fixture_per_version_and_a_complete_chain() -> None:
    assert sorted(MIGRATIONS) == list(range(1, SCHEMA_VERSION))
    for v in range(1, SCHEMA_VERSION + 1):
        assert fixture(v)["schema_version"] == v


@pytest.mark.parametrize("version", range(1, SCHEMA_VERSION + 1))
def test_every_fixture_migrates_to_a_valid_current_session(version: int) -> None:
    doc = fixture(version)
    before = copy.deepcopy(doc)
    current, original = migrate(doc)
    assert doc == before  # pure: the input is untouched
    assert original == version and current["schema_version"] == SCHEMA_VERSION
    session = session_from_dict(current)
    assert session.id == doc["id"] and session.messages
    # the current form is a fixed point: serialising and validating again changes nothing
    assert session_from_dict(session_to_dict(session)) == session


def test_v1_to_v2_splits_analysis_and_tool_calls_into_records() -> None:
    doc = fixture(1)
    out = v1_to_v2.migrate(doc)
    assert out["schema_version"] == 2
    assert out["settings"] == {"system_prompt": doc["system_prompt"], "instructions": doc["developer_prompt"]}
    assert "system_prompt" not in out and "developer_prompt" not in out
    msgs = out["messages"]
    kinds = [(m["role"], m.get("channel"), m.get("recipient")) for m in msgs]
    assert kinds == [
        ("user", None, None),
        ("assistant", "analysis", None),
        ("assistant", "commentary", "functions.get_weather"),
        ("tool", "commentary", "assistant"),
        ("assistant", "analysis", None),
        ("assistant", "final", None),
        ("user", None, None),
        ("assistant", "final", None),
    ]
    assert msgs[1]["content"] == doc["messages"][1]["analysis"]
    assert msgs[2]["content"] == doc["messages"][1]["tool_call"]["arguments"]
    assert msgs[3]["call_id"] == msgs[2]["call_id"] and msgs[3]["author"] == "functions.get_weather"
    assert msgs[5]["content"] == doc["messages"][3]["content"]
    assert len({m["id"] for m in msgs}) == len(msgs)
    assert all("analysis" not in m for m in msgs)
    assert v1_to_v2.migrate(doc) == out  # deterministic


def test_v2_to_v3_moves_figures_into_metrics_and_renames_partial() -> None:
    doc = fixture(2)
    out = v2_to_v3.migrate(doc)
    assert out["schema_version"] == 3
    by_id = {m["id"]: m for m in out["messages"]}
    assert by_id["f1"]["metrics"] == {"generated_tokens": 42, "decode_tps": 31.5}
    assert by_id["f2"]["incomplete"] is True and "partial" not in by_id["f2"]
    assert by_id["f2"]["metrics"] == {"generated_tokens": 12}
    assert all("tokens" not in m and "tok_s" not in m for m in out["messages"])
    assert "metrics" not in by_id["u1"]


def test_newer_and_missing_versions_are_refused_clearly() -> None:
    with pytest.raises(SessionVersionError, match="newer"):
        migrate({"schema_version": SCHEMA_VERSION + 1})
    for bad in ({}, {"schema_version": "2"}, {"schema_version": True}, [], {"schema_version": 0}):
        with pytest.raises(SchemaError):
            migrate(bad)


def test_broken_old_documents_raise_schema_errors_not_library_errors() -> None:
    doc = fixture(1)
    doc["messages"][1]["tool_call"] = {"name": 7}
    with pytest.raises(SchemaError, match="v1->v2"):
        migrate(doc)
    with pytest.raises(SchemaError):
        migrate({"schema_version": 2, "messages": ["x"]})


def test_v3_to_v4_adds_branches_and_keeps_the_conversation() -> None:
    from mlx_harmony_tui.sessions.migrations import v3_to_v4

    doc = fixture(3)
    out = v3_to_v4.migrate(doc)
    assert out["schema_version"] == 4 and out["messages"] == doc["messages"]
    session = session_from_dict(out)
    assert session.alternatives == []
    odd = dict(doc, alternatives=[{"not": "ours"}])  # a v3 file never had branches: kept, not trusted
    assert v3_to_v4.migrate(odd)["extra"]["v3_alternatives"] == [{"not": "ours"}]


def test_v4_fixture_has_branches_at_the_start_and_at_the_first_reply() -> None:
    from mlx_harmony_tui.sessions import branches

    session = session_from_dict(fixture(4))
    assert branches.branch_points(session) == {0: (2, 2), 1: (2, 2)}
    branches.switch(session, 0, "u0")  # the edited-away first message and its own reply come back
    assert [m.id for m in session.messages] == ["u0", "f0"]
    assert branches.branch_points(session) == {0: (1, 2)}
    branches.flip(session, 0)  # and back: the whole later conversation returns as it was
    assert [m.id for m in session.messages] == [m["id"] for m in fixture(4)["messages"]]
    assert session_from_dict(session_to_dict(session)) == session


def test_alternatives_need_a_parent() -> None:
    doc = fixture(4)
    del doc["alternatives"][0]["parent"]
    with pytest.raises(SchemaError, match=r"alternatives\[0\].parent"):
        session_from_dict(doc)
