"""The msgpack page encoder of the sync server: the wire value the page's models give."""

from __future__ import annotations

import msgpack
from hypothesis import given
from hypothesis import strategies as st

from nexus_store import _codec
from nexus_store.backends import Change
from nexus_store.server._app import _encode_page
from nexus_store.server._prepare import item_key_of
from nexus_store.server._rules import Page, change_fields
from nexus_store.server.storage._base import StoredItem

_DATA = st.dictionaries(
    st.text(max_size=4),
    st.one_of(st.integers(-(2**63), 2**63 - 1), st.text(max_size=40), st.booleans(), st.none()),
    max_size=4,
)
_ITEMS = st.builds(
    StoredItem,
    collection=st.sampled_from(["notes", "x" * 40, "é"]),
    item_key=st.one_of(st.text(max_size=40), st.integers(-(2**63), 2**63 - 1)).map(item_key_of),
    version=st.integers(1, 2**63 - 1),
    deleted=st.booleans(),
    data=st.one_of(st.none(), _DATA.map(_codec.encode)),
    hlc=st.text(max_size=64),
    schema_version=st.just(1),
)


@given(st.lists(_ITEMS, max_size=40), st.integers(0, 2**63 - 1), st.booleans())
def test_a_page_encodes_to_the_fields_of_its_changes(
    items: list[StoredItem], cursor: int, has_more: bool
) -> None:
    """Every change's fields as change_fields gives them, in the model's field order, and
    the page's cursor and has_more; a decoder reads one complete value."""
    body = _encode_page(Page(items, cursor, has_more))
    decoded = msgpack.unpackb(body, strict_map_key=False)
    assert decoded == {
        "changes": [change_fields(item) for item in items],
        "cursor": cursor,
        "has_more": has_more,
    }
    order = list(Change.model_fields)
    for change in decoded["changes"]:
        assert list(change) == [name for name in order if name in change]
