"""Prompts for the local model."""

SYSTEM = (
    "You are a careful math tutor. Solve the problem step by step. "
    "Write each step as one short paragraph and separate steps with a blank line. "
    "Show every calculation. End with the final answer in the form \\boxed{ANSWER}."
)


def messages(problem: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": problem}]


# -- cloud actions ----------------------------------------------------------------------------------

CLOUD_STEP_SYSTEM = (
    "You are an expert mathematician helping a small model solve a problem one step at a time. "
    "Write ONLY the next single step of the solution: one short paragraph with its calculation. "
    "Do not repeat earlier steps and do not write later steps. "
    "If this step reaches the final answer, end it with \\boxed{ANSWER}."
)

SOLVE_SYSTEM = (
    "You are an expert mathematician. Solve the problem step by step. Write each step as one short "
    "paragraph with its calculation and separate steps with a blank line. "
    "End with the final answer in the form \\boxed{ANSWER}."
)

PLAN_SYSTEM = (
    "You are an expert mathematician. Write a very short plan for solving the problem: at most 3 numbered "
    "sub-goals, one line each. Do not calculate anything and do not state any result."
)

INTERVENE_SYSTEM = (
    "You are an expert mathematician reviewing a small model's step-by-step solution that has stalled or "
    "may contain an error. Find the first wrong step, if any, and write the correct next step. "
    'Answer with JSON only: {"first_wrong_step": K or null, "next_step": "..."} where K is the 0-based '
    "index of the first wrong step (null if all steps are right) and next_step is one short step."
)


def transcript(steps) -> str:
    if not steps:
        return "(no steps yet)"
    return "\n\n".join(f"Step {s.index}: {s.text}" for s in steps)


def cloud_step_messages(problem: str, steps) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": CLOUD_STEP_SYSTEM},
        {"role": "user", "content": f"Problem:\n{problem}\n\nSteps so far:\n{transcript(steps)}\n\nWrite the next step."},
    ]


def continuation_messages(problem: str, steps) -> list[dict[str, str]]:
    """The edge's own conversation, its accepted steps as the assistant's unfinished message.

    The cloud continues that message (prefill): it sees the same system prompt and problem as the
    edge model, and the steps exactly as the edge's context holds them. A rejected draft is never here.
    """
    prefix = "".join(s.raw for s in steps)
    return [*messages(problem), {"role": "assistant", "content": prefix}]


HANDOVER_SYSTEM = (
    "You are an expert mathematician finishing a solution a small model has started. Continue from its "
    "steps: write the remaining steps, each one short paragraph with its calculation, separated by a blank "
    "line. Do not repeat earlier steps. End with the final answer in the form \\boxed{ANSWER}."
)


def handover_messages(problem: str, steps) -> list[dict[str, str]]:
    """The transcript prompt for a handover (providers with no prefill)."""
    return [
        {"role": "system", "content": HANDOVER_SYSTEM},
        {"role": "user", "content": f"Problem:\n{problem}\n\nSteps so far:\n{transcript(steps)}\n\n"
                                    "Write the remaining steps."},
    ]


def solve_messages(problem: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": SOLVE_SYSTEM}, {"role": "user", "content": problem}]


def plan_messages(problem: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": PLAN_SYSTEM}, {"role": "user", "content": f"Problem:\n{problem}"}]


def intervene_messages(problem: str, steps) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": INTERVENE_SYSTEM},
        {"role": "user", "content": f"Problem:\n{problem}\n\nSteps so far:\n{transcript(steps)}\n\nYour JSON:"},
    ]


JUDGE_READ_SYSTEM = (
    "You check a step-by-step solution to a math problem. Find the first step that contains an error "
    "(a wrong calculation, a wrong fact from the problem, or a wrong conclusion). "
    "Reply with only that step's number, or with the word none if every step is correct."
)


def judge_read_messages(problem: str, steps) -> list[dict[str, str]]:
    """The judge's read, for a cloud that gives no prompt log-probs: which step is the first wrong one."""
    return [
        {"role": "system", "content": JUDGE_READ_SYSTEM},
        {"role": "user", "content": f"Problem:\n{problem}\n\nSolution:\n{transcript(steps)}\n\nFirst wrong step:"},
    ]
