"""The families are one table of data: every row names real diffusers classes, once."""

from __future__ import annotations

import diffusers

from mixcache.models import registered_specs
from mixcache.models.families import FAMILIES


def test_every_family_is_one_row_of_real_classes():
    names = [spec.family for spec in FAMILIES]
    assert len(names) == len(set(names)) == 9
    for spec in FAMILIES:
        classes = spec.classes()
        assert [c.__name__ for c in classes] == list(spec.class_names)
        assert all(issubclass(c, diffusers.ModelMixin) for c in classes)
    # The registry is the table, in its order (classes are matched in that order).
    assert [s.family for s in registered_specs()][: len(names)] == names


def test_a_class_this_diffusers_lacks_matches_nothing():
    from dataclasses import replace

    ghost = replace(FAMILIES[0], family="ghost", class_names=("NoSuchTransformer3DModel",))
    assert ghost.classes() == ()
