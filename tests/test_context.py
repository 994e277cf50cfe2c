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


def test_fitting_a_long_conversation_renders_a_few_times_not_once_per_turn():
    msgs = _convo(3000) + [HMessage("user", "now")]
    calls = []

    def count(m: list[HMessage]) -> int:
        calls.append(len(m))
        return _count(m)

    budget = _count(msgs[-41:])  # the last 20 turns and the question fit
    kept, dropped, n = fit_messages(msgs, count, budget)
    assert n <= budget and dropped == len(msgs) - 41 and kept == msgs[-41:]
    assert len(calls) <= 6  # was 2,981 renders (one per dropped turn), each of up to the whole conversation
    # the fewest turns dropped: one more turn would not fit
    assert _count(msgs[-43:]) > budget


def test_fitting_stops_when_cancelled():
    import pytest

    from mlx_harmony_tui.chat.context import FitCancelled

    msgs = _convo(50) + [HMessage("user", "now")]
    calls = []

    def count(m: list[HMessage]) -> int:
        calls.append(1)
        return _count(m)

    with pytest.raises(FitCancelled):
        fit_messages(msgs, count, 30, cancelled=lambda: len(calls) >= 1)
    assert len(calls) == 1


def test_first_true_finds_the_boundary_from_any_guess():
    from mlx_harmony_tui.chat.context import first_true

    for n in (1, 2, 7, 100):
        for boundary in range(n + 1):
            for guess in (0, boundary, n - 1, n // 2):
                assert first_true(lambda i, b=boundary: i >= b, n, guess) == boundary
