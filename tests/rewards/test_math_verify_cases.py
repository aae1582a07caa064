"""Our math verdicts against plain math_verify on math_verify's own regression cases.

The fixture (tests/rewards/fixtures/math_verify_cases.json) holds the 268 (gold, prediction,
expected) cases of math_verify's test suite, as data (Apache-2.0 / MIT, The HuggingFace Team;
origin and commit in the file). For each case the prediction is the final answer a model wrote:
as is when it contains a ``\\boxed{}``, else boxed whole (``$`` delimiters removed). Plain math_verify
reads that text, ``verify(parse(gold), parse(text))`` with the case's options; we score
``<think>.</think> `` + text with :func:`klear.rewards.math.math_reward`.

The verdicts must be equal except the cases listed in STRICTER, each stricter by design (we say
wrong where plain math_verify says right, never the other way):

- ``last_box``: the prediction has several boxes, or its final answer after the last box is
  unboxed: we read only the last box of the response (the reference reward's rule);
- ``option``: the case sets a math_verify option our reward does not expose (``float_rounding``
  below 6 places, ``strict=False``, ``allow_set_relation_comp``);
- ``gold_boxed``: every ground truth is read as a boxed answer, so ``1,22`` is the set {1, 22},
  not the decimal 1.22, and an unclosed ``\\\\boxed{`` (literal backslashes) is text.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from klear.config import RewardConfig
from klear.rewards import math as mr

FIXTURE = Path(__file__).parent / "fixtures" / "math_verify_cases.json"

STRICTER = {
    6: "gold_boxed",
    133: "option",
    139: "option",
    172: "last_box",
    183: "last_box",
    186: "option",
    205: "last_box",
    217: "gold_boxed",
    235: "last_box",
    236: "last_box",
    237: "last_box",
    239: "last_box",
    241: "last_box",
    242: "last_box",
    246: "last_box",
    247: "last_box",
    248: "last_box",
    249: "last_box",
    253: "option",
}


def final_answer_text(pred: str) -> str:
    if "\\boxed" in pred or "\\fbox" in pred:
        return pred
    return "\\boxed{" + pred.strip().strip("$").strip() + "}"


@pytest.mark.slow
def test_verdicts_equal_plain_math_verify_except_stricter_by_design() -> None:
    from math_verify import parse, verify

    logging.disable(logging.WARNING)  # math_verify logs every parse failure
    try:
        cases = json.loads(FIXTURE.read_text())["cases"]
        assert len(cases) == 268
        mr.warm_up()
        mr.clear_caches()
        cfg = RewardConfig(math={"verify_timeout_s": 5.0})
        differ: dict[int, tuple[int, int]] = {}
        multi_box_golds = 0
        for i, case in enumerate(cases):
            options = case.get("options", {})
            text = final_answer_text(case["pred"])
            plain = verify(
                parse(case["gold"]),
                parse(text),
                float_rounding=options.get("precision", 6),
                strict=options.get("strict", True),
                allow_set_relation_comp=options.get("allow_set_relation_comp", False),
            )
            ours = mr.math_reward("<think>.</think> " + text, case["gold"], cfg)
            assert "timeout" not in ours.flags, (i, ours)
            if bool(plain) != ours.correct:
                differ[i] = (int(bool(plain)), int(ours.correct))
            multi_box_golds += len(set(mr.all_boxed(case["gold"]))) > 1
    finally:
        logging.disable(logging.NOTSET)
    assert multi_box_golds >= 5  # the golds that reducing to the last box used to get wrong
    assert sorted(differ) == sorted(STRICTER), {i: differ.get(i) for i in set(differ) ^ set(STRICTER)}
    assert all(v == (1, 0) for v in differ.values())  # stricter, never more lenient
    assert len(cases) - len(differ) == 249
