from edge_agent.answer import boxed, extract_answer


def test_boxed_with_nested_braces():
    assert boxed(r"so the total is \boxed{\frac{1}{2}}.") == r"\frac{1}{2}"


def test_last_complete_boxed_wins_and_unclosed_is_ignored():
    assert boxed(r"\boxed{3} then \boxed{4") == "3"
    assert boxed(r"\boxed{3} and \boxed{5}") == "5"
    assert boxed(r"\boxed{7") is None


def test_the_answer_is():
    assert extract_answer("Adding them, the answer is 3.") == "3"
    assert extract_answer("Final answer: $42$") == "42"
    assert extract_answer("The answer is: 1,000 bolts.\nMore text") == "1,000 bolts"


def test_no_answer():
    assert extract_answer("First, compute half of 2, which is 1.") is None
    assert extract_answer(r"\boxed{}") is None
