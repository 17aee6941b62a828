"""The shared test harness behind ``tests/generated/``.

Generated files only enumerate targets and call in here::

    SPEC = load("functions/yat.yaml")

    @pytest.mark.parametrize("target", ["numpy:float64", ...])
    @settings(max_examples=examples(25))
    @given(case=cases(SPEC, "matches_reference"))
    def test_yat__matches_reference(target, case):
        checks.run(SPEC, "matches_reference", target, case)

Modules: :mod:`.spec` (loading), :mod:`.strategies` (drawing cases), :mod:`.calls` (running
on a backend and the reference), :mod:`.tolerance` (per-element allowed errors),
:mod:`.checks` (generic properties), :mod:`.invariants`, :mod:`.modules`
(module == function), :mod:`.families` (roles and boundary inputs).
"""

from tests.harness import checks
from tests.harness.spec import Spec, examples, load
from tests.harness.strategies import cases

__all__ = ["Spec", "cases", "checks", "examples", "load"]
