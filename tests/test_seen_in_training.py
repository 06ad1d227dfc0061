"""seen_in_training: a task file says which published models were trained on which of its splits; the
built-in tasks say it for FLAN-T5 from the FLAN collection's task list; `tasks` and `show` print it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from flantune.errors import FlantuneError
from flantune.task import load_task_file, task_from_dict

REPO = Path(__file__).resolve().parents[1]
RT = REPO / "examples" / "plugin_folder" / "rotten_tomatoes.yaml"
FLAN_LIST = "https://github.com/google-research/FLAN/blob/36a9304a48793eaeb67c0407a1b751141ffbb29b/flan/v2/flan_collection_info.csv"


def _rt(**changes) -> dict:
    data = yaml.safe_load(RT.read_text())
    data.update(changes)
    return data


def test_a_hand_written_declaration_names_models_splits_and_roles(tmp_path):
    data = _rt(splits={"train": "train", "validation": "train[:10%]", "test": "test"},
               seen_in_training=[{"models": ["acme/model-*"], "splits": ["train"], "source": "acme paper, table 9"},
                                 {"models": ["acme/model-large"], "splits": ["test"], "source": "its card"}])
    path = tmp_path / "rotten_tomatoes.yaml"
    path.write_text(yaml.safe_dump(data))
    task = load_task_file(path)
    assert task.seen_by("acme/model-small") == ["train"]
    assert task.seen_by("acme/model-large") == ["test", "train"]
    assert task.seen_by("other/model", None) == [] and task.seen_by() == []
    assert task.seen_by("name-only", "acme/model-base") == ["train"]  # any of a model's names
    # validation is carved out of train: its rows were trained on as well
    assert task.seen_roles("acme/model-small") == ["train", "validation"]
    assert task.seen_roles("acme/model-large") == ["train", "validation", "test"]
    # it survives a command-line override (task_to_dict and back)
    assert task.with_overrides({"max_input_length": 64}).seen_in_training == task.seen_in_training


@pytest.mark.parametrize("bad, message", [
    ({"models": ["m"], "splits": ["train"], "source": "s", "year": 2022}, "'seen_in_training[0].year' is not a known"),
    ({"models": [], "splits": ["train"], "source": "s"}, "'seen_in_training[0].models' must be a non-empty list"),
    ({"models": ["m"], "splits": "train", "source": "s"}, "'seen_in_training[0].splits' must be a non-empty list"),
    ({"models": ["m"], "splits": ["train"]}, "'seen_in_training[0].source' must be a non-empty string"),
    ("google/flan-t5-base", "'seen_in_training[0]' must be a mapping"),
])
def test_a_malformed_declaration_is_refused(bad, message):
    with pytest.raises(FlantuneError, match=message.replace("[", r"\[").replace("]", r"\]")):
        task_from_dict(_rt(seen_in_training=[bad]), origin="rt.yaml")
    with pytest.raises(FlantuneError, match="must be a list"):
        task_from_dict(_rt(seen_in_training={"models": ["m"]}), origin="rt.yaml")


# What the FLAN collection's task list (FLAN_LIST) holds for each built-in task's dataset; mlqa has no row.
FLAN_T5_SEEN = {"imdb": ["train"], "emotion": ["test", "train", "validation"], "squad": ["train"],
                "squad_qg": ["train"], "paws": ["train"], "paws_paraphrase": ["train"], "samsum": ["train"],
                "mlqa_hi_en": []}
ROWS = {"imdb": "FLAN/T0,imdb_reviews,Sentiment Analysis", "emotion": "NIv2,emotion,task875_emotion_classification",
        "squad": "FLAN/T0,squad_v1,Extractive QA", "squad_qg": "FLAN/T0,squad_v1,Inverted Extractive QA",
        "paws": "FLAN/T0,paws_wiki,Paraphrasing Identification",
        "paws_paraphrase": "FLAN/T0,paws_wiki,Inverted Paraphrasing Identification",
        "samsum": "FLAN/T0,samsum,Summarization"}


@pytest.mark.parametrize("name", sorted(FLAN_T5_SEEN))
def test_builtin_tasks_declare_what_flan_t5_was_trained_on(registry, name):
    task = registry.get(name)
    for model in ("google/flan-t5-small", "google/flan-t5-base", "google/flan-t5-xxl", "flan-t5-large"):
        assert task.seen_by(model) == FLAN_T5_SEEN[name], model
    assert task.seen_by("google/t5-v1_1-base", "tiny", "google/mt5-base") == []
    if name in ROWS:
        (seen,) = task.seen_in_training
        assert seen.source.startswith(FLAN_LIST) and f'"{ROWS[name]}' in seen.source
    # squad's validation role is carved out of train; its test role (the official dev set) was not trained on
    if name == "squad":
        assert task.seen_roles("google/flan-t5-base") == ["train", "validation"]


def test_tasks_and_show_say_it(cli, shared_data):
    code, out, err = cli("tasks")
    assert code == 0, err
    assert "trained on by" in out and "google/flan-t5-*" in out
    code, out, err = cli("show", "task=samsum", "n=1", "split=test", f"data_dir={shared_data}", "stats_rows=20")
    assert code == 0, err
    flat = " ".join(out.split())
    assert "google/flan-t5-*, flan-t5-* were trained on its split(s) train" in flat
    assert "FLAN/T0,samsum,Summarization" in flat
