"""Evaluation metrics (evaluations.metrics): pure Python, no database.

Each metric's passing and failing cases, run status handling, field selection,
config validation with paths, judge prompt and reply parsing, and hypothesis
properties of jsonMatch's subset matching.
"""

from __future__ import annotations

import copy
import json
import pathlib
import subprocess
import sys
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evaluations.metrics import (
    METRIC_TYPES,
    Observation,
    Score,
    evaluate,
    evaluate_all,
    local_judge_prompt,
    parse_judge_reply,
    subset_match,
    validate_metrics,
)

REPO = pathlib.Path(__file__).resolve().parents[1]
LOCAL_MODEL = {"provider": "fruxon-local", "name": "judge"}
ORDER = {"order": {"id": 7, "status": "shipped", "items": [{"sku": "A-1", "qty": 2}, {"sku": "B-2", "qty": 1}]},
         "note": "thanks"}


def obs(output, *, status="ok", cost="0.002", latency=150, input=None) -> Observation:
    return Observation(output=output, status=status, cost_usd=Decimal(cost), latency_ms=latency,
                       input=input if input is not None else {"question": "where is my order?"})


def run(config, output, expected=None, **kwargs) -> Score:
    judge = kwargs.pop("judge", None)
    return evaluate(config, obs(output, **kwargs), expected, judge=judge)


# --- exact ---------------------------------------------------------------------


def test_exact_passes_on_equal_text_trimmed_by_default():
    score = run({"type": "exact"}, "  Paris\n", "Paris")
    assert (score.metric, score.score, score.passed) == ("exact", 1.0, True)


def test_exact_fails_on_different_text_and_says_where():
    score = run({"type": "exact"}, "Paris, France", "Paris, Texas")
    assert (score.score, score.passed) == (0.0, False)
    assert "character 8" in score.reason and "Paris, Texas" in score.reason


def test_exact_is_case_sensitive_unless_told_otherwise():
    assert not run({"type": "exact"}, "paris", "Paris").passed
    assert run({"type": "exact", "caseSensitive": False}, "PARIS", "Paris").passed


def test_exact_without_trim_keeps_whitespace():
    assert not run({"type": "exact", "trim": False}, "Paris ", "Paris").passed


def test_exact_compares_json_values_structurally():
    assert run({"type": "exact"}, '{"b": [1, 2], "a": 1.0}', {"a": 1, "b": [1, 2]}).passed
    assert run({"type": "exact"}, {"a": 1}, {"a": 1}).passed
    assert run({"type": "exact"}, "42", 42).passed
    failed = run({"type": "exact"}, '{"a": 1, "extra": true}', {"a": 1})
    assert not failed.passed and "$.extra is not expected" in failed.reason
    nested = run({"type": "exact"}, {"a": {"b": [1, 3]}}, {"a": {"b": [1, 2]}})
    assert not nested.passed and "$.a.b[1]: expected 2, got 3" in nested.reason


def test_exact_json_expected_against_non_json_output():
    score = run({"type": "exact"}, "not json at all", {"a": 1})
    assert not score.passed and "not JSON" in score.reason


def test_exact_boolean_is_not_a_number():
    assert not run({"type": "exact"}, "true", 1).passed


# --- contains --------------------------------------------------------------------


def test_contains_a_string_case_insensitively_by_default():
    score = run({"type": "contains"}, "Your order SHIPPED yesterday.", "shipped")
    assert (score.score, score.passed) == (1.0, True)


def test_contains_all_values_of_a_list():
    score = run({"type": "contains"}, "refund issued for order 7", ["refund", "order 7"])
    assert score.passed and "all 2 expected values" in score.reason


def test_contains_scores_the_fraction_found_and_names_the_missing():
    score = run({"type": "contains"}, "refund issued", ["refund", "issued", "apology"])
    assert score.score == pytest.approx(2 / 3)
    assert not score.passed and '"apology"' in score.reason


def test_contains_config_values_override_expected():
    score = run({"type": "contains", "values": ["tracking"]}, "here is your tracking link", "ignored")
    assert score.passed


def test_contains_case_sensitive_option():
    assert not run({"type": "contains", "caseSensitive": True}, "Shipped", "shipped").passed


def test_contains_searches_json_outputs_as_text():
    assert run({"type": "contains"}, {"status": "shipped"}, "shipped").passed


def test_contains_with_nothing_to_look_for_fails_with_a_reason():
    score = run({"type": "contains"}, "anything", None)
    assert not score.passed and "contains needs" in score.reason


# --- regex -----------------------------------------------------------------------


def test_regex_pattern_from_config_matches():
    score = run({"type": "regex", "pattern": r"order #\d+"}, "We found order #123.")
    assert score.passed and '"order #123"' in score.reason


def test_regex_fails_when_nothing_matches():
    score = run({"type": "regex", "pattern": r"^\d+$"}, "twelve")
    assert (score.score, score.passed) == (0.0, False) and "did not match" in score.reason


def test_regex_flags_i():
    assert not run({"type": "regex", "pattern": "hello"}, "HELLO").passed
    assert run({"type": "regex", "pattern": "hello", "flags": "i"}, "HELLO").passed


def test_regex_uses_expected_as_the_pattern_when_config_has_none():
    assert run({"type": "regex"}, "ticket FX-42 opened", r"FX-\d+").passed


def test_regex_invalid_pattern_from_expected_scores_zero():
    score = run({"type": "regex"}, "text", "(unclosed")
    assert not score.passed and "not a valid regular expression" in score.reason


# --- jsonMatch ---------------------------------------------------------------------


def test_json_match_subset_passes_with_extra_keys_in_output():
    score = run({"type": "jsonMatch"}, json.dumps(ORDER), {"order": {"id": 7, "status": "shipped"}})
    assert (score.score, score.passed) == (1.0, True)


def test_json_match_partial_score_and_first_mismatch_path():
    expected = {"order": {"id": 7, "status": "delivered",
                          "items": [{"sku": "A-1", "qty": 2}, {"sku": "B-2", "qty": 5}]}}
    score = run({"type": "jsonMatch"}, ORDER, expected)
    assert score.score == pytest.approx(4 / 6)
    assert not score.passed
    assert '$.order.status: expected "delivered", got "shipped"' in score.reason


def test_json_match_missing_key():
    score = run({"type": "jsonMatch"}, {"a": 1}, {"a": 1, "b": 2})
    assert score.score == 0.5 and "$.b is missing" in score.reason


def test_json_match_lists_need_the_same_length_by_default():
    score = run({"type": "jsonMatch"}, {"tags": ["a", "b", "c"]}, {"tags": ["a", "b"]})
    assert not score.passed and "$.tags: expected 2 items, got 3" in score.reason


def test_json_match_list_mode_contains_ignores_order_and_extras():
    config = {"type": "jsonMatch", "listMode": "contains"}
    assert run(config, ORDER, {"order": {"items": [{"sku": "B-2"}, {"sku": "A-1"}]}}).passed
    failed = run(config, ORDER, {"order": {"items": [{"sku": "C-3"}]}})
    assert not failed.passed and "$.order.items[0]: no item of the output list matches" in failed.reason


def test_json_match_numbers_compare_numerically_but_booleans_are_not_numbers():
    assert run({"type": "jsonMatch"}, '{"total": 1.0}', {"total": 1}).passed
    assert not run({"type": "jsonMatch"}, '{"flag": 1}', {"flag": True}).passed
    assert not run({"type": "jsonMatch"}, '{"n": "1"}', {"n": 1}).passed


def test_json_match_non_json_output_scores_zero():
    score = run({"type": "jsonMatch"}, "Sure! Here is the order.", {"a": 1})
    assert (score.score, score.passed) == (0.0, False)
    assert "the output is not JSON" in score.reason


def test_json_match_reads_a_fenced_json_output():
    assert run({"type": "jsonMatch"}, '```json\n{"a": 1, "b": 2}\n```', {"a": 1}).passed


def test_json_match_reads_an_expected_object_saved_as_json_text():
    assert run({"type": "jsonMatch"}, {"a": 1, "b": 2}, '{"a": 1}').passed
    assert not run({"type": "jsonMatch"}, {"a": 1, "b": 2}, '{"a": 2}').passed
    assert not run({"type": "jsonMatch"}, "3", "3").passed  # expected "3" stays a string; the output is 3
    assert run({"type": "jsonMatch"}, '"3"', "3").passed
    assert run({"type": "jsonMatch"}, '"[]"', "[]").passed  # the string itself matches first


def test_json_match_refuses_nan_as_json():
    assert not run({"type": "jsonMatch"}, "NaN", 1).passed


def test_json_match_path_mode():
    config = {"type": "jsonMatch", "mode": "path", "path": "$.order.items[0].sku"}
    assert run(config, json.dumps(ORDER), "A-1").passed
    failed = run(config, ORDER, "B-2")
    assert (failed.score, failed.passed) == (0.0, False)
    assert '$.order.items[0].sku: expected "B-2", got "A-1"' in failed.reason


def test_json_match_path_mode_missing_path():
    score = run({"type": "jsonMatch", "mode": "path", "path": "$.order.items[5].sku"}, ORDER, "A-1")
    assert not score.passed and "has 2 items" in score.reason


def test_json_match_path_mode_objects_match_as_subset():
    config = {"type": "jsonMatch", "mode": "path", "path": "$.order.items[-1]"}
    assert run(config, ORDER, {"sku": "B-2"}).passed
    assert not run(config, ORDER, {"sku": "B-2", "qty": 9}).passed


def test_json_match_path_mode_lists_compare_exactly():
    config = {"type": "jsonMatch", "mode": "path", "path": "$.tags"}
    assert run(config, {"tags": ["a", 2]}, ["a", 2.0]).passed
    assert not run(config, {"tags": ["a", 2, 3]}, ["a", 2]).passed


# --- numeric ---------------------------------------------------------------------


def test_numeric_exact_by_default():
    assert run({"type": "numeric"}, "42", 42).passed
    assert not run({"type": "numeric"}, "42.5", 42).passed


def test_numeric_absolute_tolerance_is_exact_at_the_boundary():
    assert run({"type": "numeric", "tolerance": 0.01}, "0.31", 0.3).passed
    failed = run({"type": "numeric", "tolerance": 0.01}, "0.32", 0.3)
    assert (failed.score, failed.passed) == (0.0, False)
    assert "off by 0.02" in failed.reason


def test_numeric_relative_tolerance():
    assert run({"type": "numeric", "relativeTolerance": 0.1}, 108, 100).passed
    assert not run({"type": "numeric", "relativeTolerance": 0.1}, 111, 100).passed


def test_numeric_value_at_a_path():
    config = {"type": "numeric", "path": "$.order.items[0].qty"}
    assert run(config, json.dumps(ORDER), 2).passed
    assert not run(config, ORDER, 3).passed


def test_numeric_rejects_text_and_booleans():
    score = run({"type": "numeric"}, "about forty", 40)
    assert not score.passed and "is not a number" in score.reason
    assert not run({"type": "numeric"}, True, 1).passed
    assert not run({"type": "numeric"}, "inf", 1).passed


# --- llmJudge --------------------------------------------------------------------

JUDGE = {"type": "llmJudge", "rubric": "Polite and mentions the order id.", "model": LOCAL_MODEL}


def test_llm_judge_without_a_judge():
    score = run(JUDGE, "hello")
    assert (score.score, score.passed, score.reason) == (0.0, False, "no judge configured")


def test_llm_judge_calls_the_judge_and_applies_the_default_threshold():
    calls = []

    def judge(config, observation, expected):
        calls.append((config, observation.output, expected))
        return 0.75, "polite enough"

    score = run(JUDGE, "Your order 7 shipped.", "order 7", judge=judge)
    assert calls == [(JUDGE, "Your order 7 shipped.", "order 7")]
    assert (score.metric, score.score, score.passed) == ("llmJudge", 0.75, True)
    assert "polite enough" in score.reason


def test_llm_judge_below_threshold_fails():
    score = run({**JUDGE, "threshold": 0.9}, "meh", judge=lambda c, o, e: (0.8, "not quite"))
    assert (score.score, score.passed) == (0.8, False)
    assert "below the threshold 0.9" in score.reason


def test_llm_judge_failures_score_zero_without_raising():
    def broken(config, observation, expected):
        raise RuntimeError("provider down")

    failed = run(JUDGE, "x", judge=broken)
    assert not failed.passed and "RuntimeError: provider down" in failed.reason
    out_of_range = run(JUDGE, "x", judge=lambda c, o, e: (7, "great"))
    assert (out_of_range.score, out_of_range.passed) == (0.0, False)
    assert run(JUDGE, "x", judge=lambda c, o, e: "0.9").score == 0.0


def test_llm_judge_sees_the_field_when_one_is_set():
    seen = []
    run({**JUDGE, "field": "answer"}, '{"answer": "Hi!", "debug": "..."}',
        judge=lambda c, o, e: seen.append(o.output) or (1.0, "ok"))
    assert seen == ["Hi!"]


# --- ceilings ------------------------------------------------------------------------


def test_cost_ceiling():
    assert run({"type": "costCeiling", "maxUsd": 0.01}, "x", cost="0.01").passed
    failed = run({"type": "costCeiling", "maxUsd": 0.01}, "x", cost="0.0125")
    assert (failed.score, failed.passed) == (0.0, False)
    assert "$0.0125 exceeds the $0.01 ceiling" in failed.reason


def test_latency_ceiling():
    assert run({"type": "latencyCeiling", "maxMs": 2000}, "x", latency=1999).passed
    failed = run({"type": "latencyCeiling", "maxMs": 2000}, "x", latency=2500)
    assert not failed.passed and "2500 ms exceeds the 2000 ms ceiling" in failed.reason


def test_ceilings_still_judge_runs_that_did_not_end_ok():
    assert run({"type": "costCeiling", "maxUsd": 1}, None, status="error").passed
    assert not run({"type": "latencyCeiling", "maxMs": 100}, None, status="timeout", latency=30000).passed


# --- run status ----------------------------------------------------------------------

OUTPUT_METRICS = [
    {"type": "exact"},
    {"type": "contains"},
    {"type": "regex", "pattern": "."},
    {"type": "jsonMatch"},
    {"type": "numeric"},
    JUDGE,
]


@pytest.mark.parametrize("status", ["error", "timeout", "max_tool_calls", "budget_exceeded"])
@pytest.mark.parametrize("config", OUTPUT_METRICS, ids=lambda c: c["type"])
def test_a_run_that_did_not_end_ok_scores_zero(config, status):
    called = []
    score = run(config, "1", "1", status=status, judge=lambda c, o, e: called.append(1) or (1.0, "fine"))
    assert (score.score, score.passed, score.reason) == (0.0, False, f"run ended with status {status}")
    assert called == []


# --- field -----------------------------------------------------------------------------


def test_field_selects_a_key_of_a_json_text_output():
    output = '{"answer": "Paris", "confidence": 0.9}'
    assert run({"type": "exact", "field": "answer"}, output, "Paris").passed
    assert run({"type": "exact", "field": "output.answer"}, output, "Paris").passed
    assert run({"type": "numeric", "field": "confidence", "tolerance": 0.05}, output, 0.92).passed


def test_field_output_is_the_whole_output():
    assert run({"type": "contains", "field": "output"}, "all of it", "of it").passed


def test_field_indexes_lists_with_dots_or_brackets():
    assert run({"type": "exact", "field": "order.items.1.sku"}, ORDER, "B-2").passed
    assert run({"type": "exact", "field": "order.items[1].sku"}, ORDER, "B-2").passed
    assert run({"type": "jsonMatch", "field": "order"}, ORDER, {"id": 7}).passed


def test_field_value_is_not_parsed_again():
    # A selected string is compared as the string it is, not parsed as JSON.
    assert run({"type": "exact", "field": "code"}, {"code": "42"}, "42").passed
    assert not run({"type": "exact", "field": "code"}, {"code": "42"}, 42).passed


def test_missing_field_scores_zero_with_a_reason():
    score = run({"type": "exact", "field": "answer"}, '{"other": 1}', "x")
    assert not score.passed and "field 'answer' is not in the output" in score.reason
    score = run({"type": "exact", "field": "answer"}, "plain text", "x")
    assert not score.passed and "not JSON, so field 'answer' cannot be selected" in score.reason


# --- names, evaluate_all, Score -------------------------------------------------------


def test_score_metric_is_the_config_name_or_the_type():
    assert run({"type": "exact", "name": "strict answer"}, "a", "a").metric == "strict answer"
    assert run({"type": "regex", "pattern": "a"}, "a").metric == "regex"


def test_evaluate_all_keeps_order():
    configs = [{"type": "exact"}, {"type": "contains", "name": "mentions"}, {"type": "latencyCeiling", "maxMs": 1}]
    scores = evaluate_all(configs, obs("Paris", latency=5), "Paris")
    assert [(s.metric, s.passed) for s in scores] == [("exact", True), ("mentions", True), ("latencyCeiling", False)]
    assert scores[0].to_dict() == {"metric": "exact", "score": 1.0, "passed": True,
                                   "reason": "the output equals the expected text"}


def test_evaluate_an_invalid_config_scores_zero_instead_of_raising():
    score = run({"type": "regex", "pattern": "(", "bogus": 1}, "x")
    assert not score.passed
    assert score.reason.startswith("invalid metric configuration: ")
    assert "bogus: unknown key" in score.reason and "pattern: is not a valid regular expression" in score.reason
    assert run({"type": "nope"}, "x").reason.startswith("invalid metric configuration: type: must be one of")


# --- validation ------------------------------------------------------------------------


def test_a_valid_list_has_no_problems():
    configs = [
        {"type": "exact", "caseSensitive": False, "trim": True},
        {"type": "contains", "field": "output", "name": "mentions"},
        {"type": "contains", "values": ["a", 1], "name": "has a"},
        {"type": "regex", "pattern": r"^\d+$", "flags": "im"},
        {"type": "jsonMatch", "listMode": "contains"},
        {"type": "jsonMatch", "mode": "path", "path": '$.order["line items"][0].sku', "name": "sku"},
        {"type": "numeric", "path": "$.total", "tolerance": 0.5, "relativeTolerance": 0.01},
        {"type": "llmJudge", "rubric": "Be polite.", "threshold": 0.8,
         "model": {"provider": "openai", "name": "gpt-4o-mini", "apiKey": "{{secret.OPENAI_KEY}}"}},
        {"type": "costCeiling", "maxUsd": 0.01},
        {"type": "latencyCeiling", "maxMs": 2000},
    ]
    assert validate_metrics(configs) == []
    assert validate_metrics([]) == []
    assert {c["type"] for c in configs} == set(METRIC_TYPES)


def _paths(configs):
    return [p["path"] for p in validate_metrics(configs)]


def test_validation_shapes_and_types():
    assert validate_metrics({"type": "exact"}) == [{"path": "metrics", "message": "must be a list of metric objects"}]
    assert _paths(["exact"]) == ["metrics[0]"]
    assert validate_metrics([{}]) == [{"path": "metrics[0].type", "message": "is required"}]
    problems = validate_metrics([{"type": "exact"}, {"type": "fuzzy"}])
    assert problems[0]["path"] == "metrics[1].type" and "must be one of exact, contains" in problems[0]["message"]


def test_validation_unknown_keys_and_bad_options():
    assert validate_metrics([{"type": "exact", "pattern": "x"}]) == [
        {"path": "metrics[0].pattern",
         "message": "unknown key for the exact metric; its keys are caseSensitive, field, name, trim, type"}]
    assert _paths([{"type": "costCeiling", "maxUsd": 1, "field": "x"}]) == ["metrics[0].field"]
    assert _paths([{"type": "exact", "trim": "yes", "caseSensitive": 0}]) == [
        "metrics[0].caseSensitive", "metrics[0].trim"]
    assert _paths([{"type": "exact", "name": ""}, {"type": "regex", "field": "", "pattern": "a"}]) == [
        "metrics[0].name", "metrics[1].field"]
    assert _paths([{"type": "contains", "values": []}, {"type": "contains", "name": "b", "values": ["a", None]}]) == [
        "metrics[0].values", "metrics[1].values[1]"]


def test_validation_regex():
    problems = validate_metrics([{"type": "exact"}, {"type": "regex", "pattern": "([a-z]"}])
    assert len(problems) == 1 and problems[0]["path"] == "metrics[1].pattern"
    assert "not a valid regular expression" in problems[0]["message"]
    assert _paths([{"type": "regex", "pattern": "a", "flags": "g"}]) == ["metrics[0].flags"]
    assert _paths([{"type": "regex", "pattern": ""}]) == ["metrics[0].pattern"]
    assert validate_metrics([{"type": "regex"}]) == []  # the case's expected value is the pattern


def test_validation_json_match():
    assert validate_metrics([{"type": "jsonMatch", "mode": "path"}]) == [
        {"path": "metrics[0].path", "message": 'is required with "mode": "path"'}]
    bad_path = validate_metrics([{"type": "jsonMatch", "mode": "path", "path": "order.id"}])
    assert bad_path[0]["path"] == "metrics[0].path" and 'must start with "$"' in bad_path[0]["message"]
    unreadable = validate_metrics([{"type": "jsonMatch", "mode": "path", "path": "$.items[x]"}])
    assert unreadable[0]["path"] == "metrics[0].path" and "cannot read the path" in unreadable[0]["message"]
    assert _paths([{"type": "jsonMatch", "path": "$.a"}]) == ["metrics[0].path"]
    assert _paths([{"type": "jsonMatch", "mode": "fuzzy", "listMode": "any"}]) == [
        "metrics[0].mode", "metrics[0].listMode"]


def test_validation_numeric_and_ceilings():
    assert _paths([{"type": "numeric", "tolerance": -1, "relativeTolerance": "5%"}]) == [
        "metrics[0].tolerance", "metrics[0].relativeTolerance"]
    assert _paths([{"type": "costCeiling"}, {"type": "latencyCeiling", "maxMs": 0},
                   {"type": "costCeiling", "name": "c", "maxUsd": True}]) == [
        "metrics[0].maxUsd", "metrics[1].maxMs", "metrics[2].maxUsd"]


def test_validation_llm_judge():
    problems = validate_metrics([{"type": "llmJudge"}])
    assert [p["path"] for p in problems] == ["metrics[0].rubric", "metrics[0].model"]
    problems = validate_metrics([{"type": "llmJudge", "rubric": "r", "model": {"name": "x"}, "threshold": 1.5}])
    assert [p["path"] for p in problems] == ["metrics[0].model.provider", "metrics[0].threshold"]
    problems = validate_metrics([{"type": "llmJudge", "rubric": "r", "model": {"provider": "openai", "name": "m",
                                                                               "colour": "red"}}])
    assert problems == [{"path": "metrics[0].model.colour", "message": "unknown key"}]
    assert _paths([{"type": "llmJudge", "rubric": "r", "model": "gpt-4o"}]) == ["metrics[0].model"]


def test_validation_names_must_be_unique():
    problems = validate_metrics([{"type": "contains"}, {"type": "exact"}, {"type": "contains"}])
    assert problems == [{"path": "metrics[2].name", "message": "duplicate metric name 'contains' (also metrics[0]); "
                                                              'give each metric a distinct "name"'}]
    assert validate_metrics([{"type": "contains"}, {"type": "contains", "name": "second"}]) == []
    assert _paths([{"type": "exact", "name": "x"}, {"type": "regex", "pattern": "a", "name": "x"}]) == [
        "metrics[1].name"]


# --- judge prompt and reply --------------------------------------------------------------


def test_local_judge_prompt_contains_rubric_input_expected_and_output():
    prompt = local_judge_prompt(JUDGE, obs({"answer": "Order 7 shipped"}, input={"orderId": 7}), "shipped")
    for part in ("Polite and mentions the order id.", '"orderId": 7', "<expected>\nshipped\n</expected>",
                 '"answer": "Order 7 shipped"', '{"score":'):
        assert part in prompt
    without_expected = local_judge_prompt(JUDGE, obs("x"), None)
    assert "<expected>" not in without_expected and "<output>\nx\n</output>" in without_expected


@pytest.mark.parametrize("reply, expected", [
    ('{"score": 0.8, "reason": "good"}', (0.8, "good")),
    ('```json\n{"score": 1, "reason": "perfect"}\n```', (1.0, "perfect")),
    ('Here is my grade:\n{"score": 0.25, "reason": "rude"}\nHope that helps.', (0.25, "rude")),
    ('Grade: ```\n{"reason": "ok", "score": "0.5"}\n``` done', (0.5, "ok")),
    ('{"verdict": {"score": 0.6, "reason": "nested"}}', (0.6, "nested")),
    ("0.9", (0.9, "the judge gave no reason")),
    ("  1  ", (1.0, "the judge gave no reason")),
    ('{"score": 0}', (0.0, "the judge gave no reason")),
])
def test_parse_judge_reply_accepts(reply, expected):
    assert parse_judge_reply(reply) == expected


@pytest.mark.parametrize("reply, fragment", [
    ('{"score": 7, "reason": "great"}', "outside 0..1"),
    ('{"score": -0.1, "reason": "bad"}', "outside 0..1"),
    ('{"score": "high", "reason": "x"}', "is not a number"),
    ('{"score": true}', "is not a number"),
    ('{"score": NaN}', "is not a number"),
    ("I would say it is pretty good.", "could not read a score"),
    ('{"rating": 0.9}', "could not read a score"),
    ("", "empty"),
    ("8", "outside 0..1"),
])
def test_parse_judge_reply_rejects_with_score_zero(reply, fragment):
    score, reason = parse_judge_reply(reply)
    assert score == 0.0 and fragment in reason


# --- purity ----------------------------------------------------------------------------


def test_metrics_import_without_django_in_a_fresh_interpreter():
    code = (
        "import sys\n"
        "from evaluations import metrics\n"
        "judge = {'type': 'llmJudge', 'rubric': 'r', 'model': {'provider': 'fruxon-local'}}\n"
        "assert metrics.validate_metrics([judge]) == []\n"
        "leaked = sorted(m for m in sys.modules if m == 'django' or m.startswith('django.'))\n"
        "assert not leaked, leaked\n"
    )
    completed = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60,
                               env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)})
    assert completed.returncode == 0, completed.stderr


# --- properties of jsonMatch -------------------------------------------------------------

scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-10**6, max_value=10**6),
                    st.floats(allow_nan=False, allow_infinity=False, width=32), st.text(max_size=6))
keys = st.text(max_size=5)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=4),
    max_leaves=12,
)
json_objects = st.dictionaries(keys, json_values, max_size=5)
list_modes = st.sampled_from(["exact", "contains"])
PROPERTY_SETTINGS = settings(max_examples=100, deadline=None)


def _same_scalar(a, b) -> bool:
    """Independent of the code under test: equal JSON kind and value."""
    def kind(v):
        return "bool" if isinstance(v, bool) else "number" if isinstance(v, (int, float)) else type(v).__name__
    return kind(a) == kind(b) and a == b


def _leaf_paths(value, prefix=()):
    """Paths (tuples of keys/indexes) to every scalar leaf."""
    if isinstance(value, dict):
        for key, child in value.items():
            yield from _leaf_paths(child, prefix + (key,))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from _leaf_paths(child, prefix + (index,))
    else:
        yield prefix


def _get(value, path):
    for part in path:
        value = value[part]
    return value


def _set(value, path, new):
    _get(value, path[:-1])[path[-1]] = new


def _with_a_leaf(draw):
    """A dict with at least one scalar leaf, and the path to one of them."""
    value = draw(json_objects)
    leaves = list(_leaf_paths(value))
    if not leaves:
        value[draw(keys)] = draw(scalars)
        leaves = list(_leaf_paths(value))
    return value, draw(st.sampled_from(leaves))


@PROPERTY_SETTINGS
@given(json_values, list_modes)
def test_property_any_json_value_matches_itself(value, list_mode):
    # A text output is the JSON document, so a string value travels as its JSON text.
    outputs = [json.dumps(value)] + ([] if isinstance(value, str) else [copy.deepcopy(value)])
    for output in outputs:
        score = evaluate({"type": "jsonMatch", "listMode": list_mode}, obs(output), value)
        assert (score.score, score.passed) == (1.0, True), score.reason


def _widen(draw, value):
    """``value`` with new keys added to it and to every nested object."""
    if isinstance(value, list):
        return [_widen(draw, child) for child in value]
    if not isinstance(value, dict):
        return value
    wider = {key: _widen(draw, child) for key, child in value.items()}
    extra = draw(st.dictionaries(keys.filter(lambda k: k not in value), json_values, max_size=3))
    wider.update(extra)
    return wider


@PROPERTY_SETTINGS
@given(json_objects, st.data())
def test_property_a_dict_matches_any_superset_built_by_adding_keys(expected, data):
    output = _widen(data.draw, expected)
    score = evaluate({"type": "jsonMatch"}, obs(json.dumps(output)), expected)
    assert (score.score, score.passed) == (1.0, True), score.reason


@PROPERTY_SETTINGS
@given(st.data())
def test_property_changing_a_leaf_of_a_matched_pair_fails(data):
    expected, path = _with_a_leaf(data.draw)
    output = copy.deepcopy(expected)
    assert evaluate({"type": "jsonMatch"}, obs(output), expected).passed
    old = _get(output, path)
    _set(output, path, data.draw(scalars.filter(lambda v: not _same_scalar(v, old))))
    score = evaluate({"type": "jsonMatch"}, obs(output), expected)
    assert not score.passed and score.score < 1.0, (expected, output)
    assert "first mismatch" in score.reason


@PROPERTY_SETTINGS
@given(st.data())
def test_property_removing_a_key_of_a_matched_pair_fails(data):
    expected, path = _with_a_leaf(data.draw)
    # Any object key on the way to the leaf (the first step always is one: expected is an object).
    removed = data.draw(st.sampled_from([path[:i] for i in range(1, len(path) + 1) if isinstance(path[i - 1], str)]))
    output = copy.deepcopy(expected)
    del _get(output, removed[:-1])[removed[-1]]
    score = evaluate({"type": "jsonMatch"}, obs(json.dumps(output)), expected)
    assert not score.passed and score.score < 1.0
    assert "is missing" in score.reason


@PROPERTY_SETTINGS
@given(json_values, json_values, list_modes)
def test_property_score_is_within_0_and_1_and_passed_means_score_1(expected, output, list_mode):
    score = evaluate({"type": "jsonMatch", "listMode": list_mode}, obs(output), expected)
    assert 0.0 <= score.score <= 1.0
    assert score.passed == (score.score == 1.0)
    direct = subset_match(expected, output, list_mode=list_mode)
    assert 0 <= direct.matched <= direct.total


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.sampled_from(["type", "name", "field", "pattern", "mode", "path", "values", "maxUsd",
                                        "maxMs", "tolerance", "rubric", "model", "threshold", "listMode", "flags"]),
                       json_values, max_size=5),
       st.sampled_from(METRIC_TYPES), json_values, json_values)
def test_property_validate_and_evaluate_never_raise(config, kind, output, expected):
    config = {**config, "type": kind}
    assert isinstance(validate_metrics([config]), list)
    score = evaluate(config, obs(output), expected, judge=lambda c, o, e: (0.5, "half"))
    assert 0.0 <= score.score <= 1.0 and isinstance(score.reason, str)
