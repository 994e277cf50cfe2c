"""Metrics collectors: vm_stat parsing, RSS, live/final snapshots."""

from __future__ import annotations

import time

from mlx_harmony_tui.engine.metrics import MetricsTracker, parse_vm_stat, rss_bytes

VM_STAT_M2 = """Mach Virtual Memory Statistics: (page size of 16384 bytes)
Pages free:                                5012.
Pages active:                            412331.
Pages inactive:                          401228.
Pages speculative:                         6744.
Pages throttled:                              0.
Pages wired down:                        151287.
Pages purgeable:                          14921.
"Translation faults":                 893921373.
Pages copy-on-write:                   29817236.
Pages zero filled:                    384772104.
Pages reactivated:                      2917613.
Pages purged:                           1262736.
File-backed pages:                       203841.
Anonymous pages:                         616462.
Pages stored in compressor:              581830.
Pages occupied by compressor:            155170.
Decompressions:                         3129104.
Compressions:                           4829312.
Pageins:                               14417102.
Pageouts:                                 84227.
Swapins:                                      0.
Swapouts:                                     0.
"""

VM_STAT_INTEL = """Mach Virtual Memory Statistics: (page size of 4096 bytes)
Pages free:                               41000.
Pages wired down:                        900001.
"""


def test_parse_vm_stat_apple_silicon() -> None:
    assert parse_vm_stat(VM_STAT_M2) == 151287 * 16384


def test_parse_vm_stat_other_page_size() -> None:
    assert parse_vm_stat(VM_STAT_INTEL) == 900001 * 4096


def test_parse_vm_stat_garbage() -> None:
    assert parse_vm_stat("") is None
    assert parse_vm_stat("Pages wired down: 12.") is None  # no page size header


def test_rss_is_plausible() -> None:
    assert 10 << 20 < rss_bytes() < 64 << 30


def test_tracker_rates() -> None:
    t = MetricsTracker(prompt_tokens=100, reused_tokens=60)
    time.sleep(0.02)
    t.prefill_done()
    t.token()
    for _ in range(10):
        time.sleep(0.005)
        t.token()
    m = t.snapshot(final=True)
    assert m.final and m.prefilled_tokens == 40 and m.generated_tokens == 11
    assert m.ttft_s is not None and m.ttft_s >= 0.02
    assert m.prefill_tps is not None and m.prefill_tps <= 40 / 0.02
    # decode excludes the first token: 10 tokens over >= 50 ms
    assert m.decode_tps is not None and m.decode_tps <= 10 / 0.05
    assert m.context_tokens == 111 and m.rss_bytes > 0
