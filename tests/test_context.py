from mlx_harmony_tui.chat.context import fit_messages
from mlx_harmony_tui.harmony.messages import HMessage


def _convo(turns: int) -> list[HMessage]:
    out = []
    for i in range(turns):
        out.append(HMessage("user", f"question {i} " * 5))
        out.append(HMessage("assistant", f"answer {i} " * 5, channel="final"))
    return out


def _count(msgs: list[HMessage]) -> int:
    return 10 + sum(len(m.text.split()) for m in msgs)


def test_fits_unchanged():
    msgs = _convo(3)
    kept, dropped, n = fit_messages(msgs, _count, 1000)
    assert kept == msgs and dropped == 0 and n == _count(msgs)


def test_drops_oldest_whole_turns_only():
    msgs = _convo(5) + [HMessage("user", "now " * 3)]
    budget = _count(msgs) - 15  # needs more than one turn's worth dropped? one turn is 20 words
    kept, dropped, n = fit_messages(msgs, _count, budget)
    assert dropped == 2 and kept[0].role == "user" and kept[0].text.startswith("question 1")
    assert n <= budget and kept[-1].text.startswith("now")


def test_never_drops_current_turn():
    msgs = _convo(2) + [HMessage("user", "x " * 500)]
    kept, dropped, n = fit_messages(msgs, _count, 50)
    assert kept == [msgs[-1]] and dropped == 4 and n > 50
