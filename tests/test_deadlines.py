"""Deadlines: one entry per member, handed out once they pass."""

from __future__ import annotations

from rpushd.deadlines import Deadlines


def test_only_members_whose_deadline_passed_are_returned() -> None:
    deadlines: Deadlines[str] = Deadlines()
    deadlines.set("early", 1.0)
    deadlines.set("on time", 2.0)
    deadlines.set("late", 3.0)
    assert sorted(deadlines.passed(2.0)) == ["early", "on time"]
    assert deadlines.passed(2.5) == []
    assert deadlines.passed(3.0) == ["late"]


def test_a_passed_deadline_is_handed_out_once() -> None:
    deadlines: Deadlines[str] = Deadlines()
    deadlines.set("member", 1.0)
    assert deadlines.passed(5.0) == ["member"]
    assert deadlines.passed(6.0) == []
    assert len(deadlines) == 0


def test_setting_again_replaces_the_deadline() -> None:
    deadlines: Deadlines[str] = Deadlines()
    deadlines.set("member", 1.0)
    deadlines.set("member", 10.0)
    assert deadlines.passed(5.0) == []
    assert deadlines.passed(10.0) == ["member"]


def test_cleared_members_never_come_back() -> None:
    deadlines: Deadlines[str] = Deadlines()
    deadlines.set("member", 1.0)
    deadlines.clear("member")
    deadlines.clear("unknown")
    assert deadlines.passed(100.0) == []
