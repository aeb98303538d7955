"""Channel names under property-based testing (PROTOCOL.md, "Channels").

:func:`is_valid_name` must agree, for any text at all, with the contract
read literally: 1 to 191 characters, each one of ``A-Z a-z 0-9 : - _ .``.
Unicode offers many look-alikes (other digits, full-width letters, the
Kelvin sign, dotless i) that Python's ``isalnum`` or a ``\\w`` would admit.
"""

from __future__ import annotations

import string

from hypothesis import example, given
from hypothesis import strategies as st

import fuzzing  # noqa: F401  (loads the hypothesis profile)
from rpushd.channels import is_valid_name

ALLOWED = frozenset(string.ascii_letters + string.digits + ":-_.")
MAX_LENGTH = 191


def reference(name: str) -> bool:
    """The contract's rule, as plainly as it can be written."""
    return 1 <= len(name) <= MAX_LENGTH and all(char in ALLOWED for char in name)


# Characters a sloppier check would let through, and separators that
# matter in paths, queries, logs and stats output.
LOOKALIKES = (
    "\u0660\u06f3\u0966\uff11\u00b2\u2460"  # digits that are not 0-9
    "\uff21\uff41\u212a\u0131\u0130\u017f\u00c5\u0391\u0430"  # letters
    "\uff1a\u2010\u2011\u2013\uff3f\u2024\u00b7\uff0e"  # : - _ . look-alikes
    " \t\n\r\x00\x0b\x0c\x85\u2028\u00a0/%?#&=|\\\"'<>"
)
names_near_the_rules = st.text(
    st.sampled_from(sorted(ALLOWED)) | st.sampled_from(LOOKALIKES), max_size=12
)
long_names = st.builds(
    lambda body, size, tail: (body * size)[:size] + tail,
    st.text(st.sampled_from(sorted(ALLOWED)), min_size=1, max_size=4),
    st.integers(MAX_LENGTH - 3, MAX_LENGTH + 3),
    st.sampled_from(["", "\n", "a", "\u212a"]),
)
# Every Unicode general category but Cs (lone surrogates, drawn by text()).
CATEGORIES = [
    "Lu", "Ll", "Lt", "Lm", "Lo", "Mn", "Mc", "Me", "Nd", "Nl", "No", "Pc",
    "Pd", "Ps", "Pe", "Pi", "Pf", "Po", "Sm", "Sc", "Sk", "So", "Zs", "Zl",
    "Zp", "Cc", "Cf", "Co", "Cn",
]  # fmt: skip
one_category = st.sampled_from(CATEGORIES).flatmap(
    lambda category: st.text(st.characters(categories=[category]), max_size=8)
)


@given(name=st.text() | names_near_the_rules | long_names | one_category)
@example(name="")
@example(name="a" * MAX_LENGTH)
@example(name="a" * (MAX_LENGTH + 1))
@example(name="thread-posts:459\n")
@example(name="\u212aelvin")
@example(name="\ud800")
def test_is_valid_name_agrees_with_the_contract(name: str) -> None:
    assert is_valid_name(name) == reference(name)


@given(name=st.from_regex(r"[A-Za-z0-9:._-]{1,191}", fullmatch=True))
def test_every_name_the_contract_allows_is_valid(name: str) -> None:
    assert is_valid_name(name)
