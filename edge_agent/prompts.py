"""Prompts for the local model."""

SYSTEM = (
    "You are a careful math tutor. Solve the problem step by step. "
    "Write each step as one short paragraph and separate steps with a blank line. "
    "Show every calculation. End with the final answer in the form \\boxed{ANSWER}."
)


def messages(problem: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": problem}]
