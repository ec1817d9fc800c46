from hypothesis import given, settings, strategies as st

from slimc.runtime.memory_plan import ALIGN, Interval, check, plan


def test_chain_reuses_space():
    # a -> b -> c -> d: only two buffers are ever alive at once
    ivs = [Interval("a", 1000, 0, 1), Interval("b", 1000, 1, 2), Interval("c", 1000, 2, 3),
           Interval("d", 1000, 3, 3)]
    p = plan(ivs)
    check(p, ivs)
    assert p.arena_bytes == 2 * 1024
    assert p.naive_bytes == 4 * 1024


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 5000), st.integers(0, 30), st.integers(0, 10)),
                min_size=1, max_size=40))
def test_no_two_live_buffers_overlap(raw):
    ivs = [Interval(f"v{i}", size, first, first + span) for i, (size, first, span) in enumerate(raw)]
    p = plan(ivs)
    check(p, ivs)
    assert all(off % ALIGN == 0 for off in p.offsets.values())
    # never worse than giving each buffer its own space
    assert p.arena_bytes <= p.naive_bytes
