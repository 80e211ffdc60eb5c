"""Pure functions of in-context classification: calibration maths on hand numbers, answer
extraction, demonstration selection, templates."""

from __future__ import annotations

import numpy as np
import pytest

from peftlab.infra.errors import PeftlabError
from peftlab.icl.calibration import calibrate, content_free_prior, label_scores, normalise, softmax
from peftlab.icl.demos import balanced_indices, nearest_indices, random_indices
from peftlab.icl.reasoning import extract_answer, majority_vote
from peftlab.prompts.template import Demo, answer_strings, load_template, render_context


def test_calibration_on_hand_numbers():
    # prior from two content-free inputs: mean of [0.6,0.3,0.1] and [0.8,0.1,0.1] = [0.7,0.2,0.1]
    prior = content_free_prior(np.array([[0.6, 0.3, 0.1], [0.8, 0.1, 0.1]]))
    np.testing.assert_allclose(prior, [0.7, 0.2, 0.1])
    # p = [0.5,0.3,0.2] / prior = [0.714.., 1.5, 2.0] -> normalised by 4.2142857
    q = calibrate(np.array([[0.5, 0.3, 0.2]]), prior)
    np.testing.assert_allclose(q, [[0.5 / 0.7 / 4.2142857, 1.5 / 4.2142857, 2.0 / 4.2142857]], rtol=1e-6)
    assert q.argmax() == 2  # calibration flips the raw argmax (0) to the class the prior suppressed
    # a uniform prior changes nothing
    np.testing.assert_allclose(calibrate(np.array([[0.5, 0.3, 0.2]]), np.ones(3) / 3), [[0.5, 0.3, 0.2]])


def test_temperature_softmax_and_verbalizer_aggregation():
    np.testing.assert_allclose(softmax(np.log([[1.0, 3.0]])), [[0.25, 0.75]])
    np.testing.assert_allclose(softmax(np.log([[1.0, 3.0]]), temperature=0.5), [[0.1, 0.9]])
    # label 0 has two verbalizers with probabilities 0.1 and 0.3: its score is log(0.4)
    s = label_scores(np.log([0.1, 0.3, 0.2]), [0, 0, 1], 2)
    np.testing.assert_allclose(s, np.log([0.4, 0.2]))
    assert normalise(-6.0, 3, 12, "sum") == -6.0
    assert normalise(-6.0, 3, 12, "token") == -2.0
    assert normalise(-6.0, 3, 12, "char") == -0.5


VERBS = [[" negative"], [" neutral"], [" positive", " good"]]


@pytest.mark.parametrize("text, want", [
    ("The drug helped a lot. The answer is positive.", 2),
    ("Mostly bad side effects... The answer is: Negative", 0),
    ("It was good at first, then negative effects. The answer is neutral, not positive.", 1),
    ("no explicit answer, but overall good", 2),         # last verbalizer mentioned
    ("positive at first; in the end negative", 0),
    ("nothing that names a label", None),
    ("The answer is unclear; I'd say positive", 2),      # answer phrase with no label after it
    ("the goodness of it", None),                        # whole words only
    ("non-negative outcome", 0),                         # a hyphen is a word boundary
])
def test_extract_answer(text, want):
    assert extract_answer(text, VERBS) == want


def test_longer_verbalizer_wins_over_its_substring():
    assert extract_answer("The answer is not good", [[" good"], [" not good"]]) == 1


def test_majority_vote():
    assert majority_vote([2, 0, 2, None, 1], 3) == 2
    assert majority_vote([1, 0], 3) == 0  # ties go to the lowest label
    assert majority_vote([None, None], 3) is None
    assert majority_vote([5, 1], 3) == 1  # out-of-range answers are ignored


def test_demonstration_selection_is_seeded_and_balanced():
    labels = np.array([0] * 10 + [1] * 5 + [2] * 2)
    a, b = balanced_indices(labels, 6, seed=3), balanced_indices(labels, 6, seed=3)
    assert a == b and len(set(a)) == 6
    assert sorted(np.bincount(labels[a], minlength=3)) == [2, 2, 2]
    assert balanced_indices(labels, 6, seed=4) != a
    # more shots than the rare class has: it gives all it has, the rest fill up
    counts = np.bincount(labels[balanced_indices(labels, 9, seed=0)], minlength=3)
    assert counts[2] == 2 and sorted(counts.tolist()) == [2, 3, 4]
    r = random_indices(labels, 4, seed=1)
    assert r == random_indices(labels, 4, seed=1) and len(set(r)) == 4


def test_nearest_neighbours_most_similar_last():
    pool = np.array([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7], [-1.0, 0.0]])
    got = nearest_indices(np.array([[1.0, 0.1]]), pool, 2)
    assert got == [[2, 0]]


def test_shipped_templates_render_plain_and_chat():
    tpl = load_template("sentiment")
    verbs = tpl.for_labels(["negative", "neutral", "positive"])
    demo = Demo("It hurt.", None, verbs[0][0])
    text = render_context(tpl, [demo], "Works well.", None)
    assert text == (tpl.instruction + "\n\nReview: It hurt.\nSentiment: negative\n\nReview: Works well.\nSentiment:")
    nli = load_template("nli")
    assert "Hypothesis: B" in render_context(nli, [], "A", "B")
    assert answer_strings([[" yes"]], chat=True) == [["yes"]]

    class ChatTok:
        def apply_chat_template(self, messages, tokenize, add_generation_prompt):
            return "".join(f"<{m['role']}>{m['content']}</>" for m in messages) + "<assistant>"

    chat = render_context(tpl, [Demo("It hurt.", None, "negative")], "Works well.", None, ChatTok())
    assert chat.startswith(f"<user>{tpl.instruction}\n\nReview: It hurt.\nSentiment:</><assistant>negative</>")
    assert chat.endswith("<user>Review: Works well.\nSentiment:</><assistant>")


def test_template_errors_are_one_line(tmp_path):
    with pytest.raises(PeftlabError, match="no verbalizer for label"):
        load_template("sentiment").for_labels(["positive", "sarcastic"])
    with pytest.raises(PeftlabError, match="not a shipped template"):
        load_template("sentimnet")
    bad = tmp_path / "t.yaml"
    bad.write_text("example: 'x {text}'\nverbalizers: {a: ' a'}\n", encoding="utf-8")
    with pytest.raises(PeftlabError, match="verbalizers"):
        load_template(str(bad))
    custom = load_template("sentiment", {"verbalizers": {"pos": " great", "neg": [" awful", " bad"]}})
    assert custom.for_labels(["neg", "pos"]) == [[" awful", " bad"], [" great"]]
