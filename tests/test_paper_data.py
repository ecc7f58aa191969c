"""Loaders for the paper's data that no machine here has (OpenBookQA, FaithEval counterfactual, HelpSteer), read from
a user's local copy: small invented fixtures in the upstream schemas, and clear errors for a missing file or a wrong
schema."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import matsteer.data as D
from matsteer.data.paper_data import load_faitheval, load_local_examples, load_openbookqa, mc_examples
from matsteer.data.registry import FAITHEVAL_TEMPLATE, LOCAL_ATTRIBUTE_OF, LOCAL_DATASETS
from matsteer.errors import ConfigError, DataError

FIXTURES = Path(__file__).parent / "fixtures"
OBQA = FIXTURES / "openbookqa_main.jsonl"
FAITHEVAL = FIXTURES / "faitheval_counterfactual.jsonl"


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# --------------------------------------------------------------------------------------------------
# OpenBookQA
# --------------------------------------------------------------------------------------------------


def test_openbookqa_fixture():
    qs = load_openbookqa(OBQA)
    rows = _rows(OBQA)
    assert len(qs) == len(rows) == 5
    for q, r in zip(qs, rows):
        assert q.dataset == "openbookqa" and q.group == f"openbookqa:{r['id']}"
        assert q.prompt == r["question_stem"] and q.choices == r["choices"]["text"]
        gold = r["choices"]["label"].index(r["answerKey"])
        assert q.correct == [gold] and q.meta["answer_key"] == r["answerKey"]
        assert q.text(gold) == f"Q: {r['question_stem']} A: {r['choices']['text'][gold]}"
    assert qs[0].correct == [1] and qs[3].correct == [3]  # answerKey "B" and "D"
    # The same through the general loaders, and the split/limit machinery.
    assert D.load_mc_questions("openbookqa", source=OBQA) == qs
    parts = {s: D.load_mc_questions("openbookqa", s, source=OBQA) for s in ("train", "dev", "test")}
    assert sorted(q.group for p in parts.values() for q in p) == sorted(q.group for q in qs)
    assert [len(p) for p in parts.values()] == [2, 1, 2]  # 40/10/50 of 5, rounded half up
    assert len(load_openbookqa(OBQA, limit=2)) == 2
    assert load_openbookqa(OBQA, "test", seed=1) == load_openbookqa(OBQA, "test", seed=1)


def test_openbookqa_examples():
    ex = D.load_examples("openbookqa", source=OBQA)
    assert len(ex) == 20 and {e.attribute for e in ex} == {LOCAL_ATTRIBUTE_OF["openbookqa"]}
    assert sum(e.label for e in ex) == 5 and len({e.group for e in ex}) == 5
    assert ex[1].label == 1 and ex[1].text == f"Q: {ex[1].prompt} A: {ex[1].answer}"
    assert ex == mc_examples(load_openbookqa(OBQA), "obqa") == load_local_examples("openbookqa", OBQA)
    with pytest.raises(ConfigError, match="only the attribute 'obqa'"):
        D.load_examples("openbookqa", source=OBQA, attribute="truthfulness")


def test_openbookqa_original_and_parquet(tmp_path):
    rows = _rows(OBQA)
    original = [{"id": r["id"], "question": {"stem": r["question_stem"], "choices": [
        {"text": t, "label": lab} for t, lab in zip(r["choices"]["text"], r["choices"]["label"])]},
        "answerKey": r["answerKey"]} for r in rows]
    from_original = load_openbookqa(_write(tmp_path / "test.jsonl", original))
    assert [(q.prompt, q.choices, q.labels) for q in from_original] == \
        [(q.prompt, q.choices, q.labels) for q in load_openbookqa(OBQA)]
    assert {q.meta["format"] for q in from_original} == {"original"}
    datasets = pytest.importorskip("datasets")
    pq = tmp_path / "test-00000-of-00001.parquet"
    datasets.Dataset.from_list(rows).to_parquet(str(pq))  # as the hub serves the 'main' config
    assert load_openbookqa(pq) == load_openbookqa(OBQA)


def test_openbookqa_bad_input(tmp_path):
    with pytest.raises(DataError, match=r"not shipped.*allenai/openbookqa.*source="):
        load_openbookqa(None)
    with pytest.raises(DataError, match=r"file not found.*Fix: check the path.*allenai/openbookqa"):
        D.load_mc_questions("openbookqa", source=tmp_path / "missing.jsonl")
    with pytest.raises(DataError, match="file not found"):
        load_openbookqa("allenai/openbookqa")  # a hub id is not read
    # A file of another data set: the message names the fields found and the schema needed.
    with pytest.raises(DataError, match=r"line 1: the record is not in OpenBookQA's upstream schema.*\['mc1_targets', 'mc2_targets', "
                                        r"'question'\].*question_stem.*Fix: pass a local copy"):
        load_openbookqa(FIXTURES / "truthfulqa_hf.jsonl")
    rows = _rows(OBQA)
    with pytest.raises(DataError, match=r"line 2: answerKey 'E' is not one of the choice labels"):
        load_openbookqa(_write(tmp_path / "key.jsonl", [rows[0], {**rows[1], "answerKey": "E"}]))
    with pytest.raises(DataError, match="duplicate question id '7-101'"):
        load_openbookqa(_write(tmp_path / "dup.jsonl", [rows[0], rows[0]]))
    with pytest.raises(DataError, match="4 choice texts but 3 labels"):
        bad = {**rows[0], "choices": {"text": rows[0]["choices"]["text"], "label": ["A", "B", "C"]}}
        load_openbookqa(_write(tmp_path / "len.jsonl", [bad]))
    with pytest.raises(DataError, match="not in OpenBookQA's upstream schema"):
        load_openbookqa(_write(tmp_path / "flat.jsonl", [{**rows[0], "choices": ["a", "b"]}]))
    with pytest.raises(DataError, match="file is empty"):
        load_openbookqa(_write(tmp_path / "empty.jsonl", []))
    with pytest.raises(ConfigError, match="unknown split"):
        load_openbookqa(OBQA, "validation")


# --------------------------------------------------------------------------------------------------
# FaithEval counterfactual
# --------------------------------------------------------------------------------------------------


def test_faitheval_fixture():
    qs = load_faitheval(FAITHEVAL)
    rows = _rows(FAITHEVAL)
    assert len(qs) == 4 and [q.group for q in qs] == [f"faitheval:{r['id']}" for r in rows]
    for q, r in zip(qs, rows):
        gold = r["choices"]["label"].index(r["answerKey"])
        assert q.correct == [gold] and q.choices[gold] == r["answer"] == q.meta["answer"]
        assert q.template == FAITHEVAL_TEMPLATE
        assert q.text(gold) == (
            "You are an expert in retrieval question answering.\n"
            "Please respond with the exact answer only. Do not be verbose or provide extra information.\n"
            f"Context: {r['context']}\nQuestion: {r['question']}\nAnswer: {r['answer']}")
    # The counterfactual answer the context supports is the correct one, not the world-knowledge one.
    assert qs[1].choices[qs[1].correct[0]] == "the moon"
    qa = load_faitheval(FAITHEVAL, prompt_style="qa")
    assert qa[0].text(1) == f"Q: {rows[0]['context']} {rows[0]['question']} A: liquid copper"
    assert D.load_mc_questions("faitheval", source=FAITHEVAL) == qs
    ex = D.load_examples("faitheval", source=FAITHEVAL)
    assert len(ex) == 16 and {e.attribute for e in ex} == {"faithfulness"} and sum(e.label for e in ex) == 4


def test_faitheval_bad_input(tmp_path):
    with pytest.raises(DataError, match=r"FaithEval counterfactual is not shipped.*FaithEval-counterfactual-v1.0"):
        D.load_mc_questions("faitheval")
    rows = _rows(FAITHEVAL)
    free_form = [{k: v for k, v in r.items() if k not in ("choices", "answerKey")} for r in rows]
    with pytest.raises(DataError, match=r"line 1: the record is not in FaithEval counterfactual's upstream schema.*\['answer', 'context', 'id', "
                                        r"'question'\].*unanswerable and inconsistent"):
        load_faitheval(_write(tmp_path / "unanswerable.jsonl", free_form))
    with pytest.raises(DataError, match="field 'context' is empty"):
        load_faitheval(_write(tmp_path / "blank.jsonl", [{**rows[0], "context": "  "}]))
    with pytest.raises(DataError, match="answerKey None"):
        load_faitheval(_write(tmp_path / "nokey.jsonl", [{**rows[0], "answerKey": None}]))
    with pytest.raises(ConfigError, match="prompt_style"):
        load_faitheval(FAITHEVAL, prompt_style="chat")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="only the attribute 'faithfulness'"):
        D.load_examples("faitheval", source=FAITHEVAL, attribute="obqa")


def test_folder_and_ids(tmp_path):
    rows = _rows(FAITHEVAL)
    _write(tmp_path / "a.jsonl", rows[:2])
    _write(tmp_path / "b.jsonl", [{k: v for k, v in r.items() if k != "id"} for r in rows[2:]])
    qs = load_faitheval(tmp_path)  # every table in the folder, in name order
    assert [q.group for q in qs] == ["faitheval:cf-001", "faitheval:cf-002", "faitheval:row2", "faitheval:row3"]
    assert [q.meta["file"] for q in qs] == ["a.jsonl", "a.jsonl", "b.jsonl", "b.jsonl"]


def test_local_sets_stay_out_of_the_shipped_vocabulary():
    assert set(LOCAL_DATASETS) == {"openbookqa", "faitheval"}
    assert not set(LOCAL_DATASETS) & set(D.DATASETS)  # no shipped files, no saved splits, no provenance hashes
    with pytest.raises(ConfigError, match="valid choices: .*openbookqa, faitheval"):
        D.load_mc_questions("paradetox")


# --------------------------------------------------------------------------------------------------
# HelpSteer (matsteer.data.helpsteer), the third set: the upstream schema from a local file
# --------------------------------------------------------------------------------------------------


def test_helpsteer_local_file_in_upstream_schema(tmp_path):
    path = FIXTURES / "helpsteer_small.jsonl"
    assert set(_rows(path)[0]) == {"prompt", "response", *D.HELPSTEER_ATTRIBUTES}  # nvidia/HelpSteer's columns
    ex = D.load_helpsteer(path, "helpfulness", n_per_class=5)
    assert ex and all(e.label == int(int(e.meta["score"]) >= 3) for e in ex)
    with pytest.raises(DataError, match=r"record lacks field\(s\) \['prompt', 'response'"):
        D.load_helpsteer(OBQA)
