"""The judge metric: an LLM scores each answer against spec.evaluation.judge.rubric, through any OpenAI-compatible
endpoint (a ModelDeployment's Service, a hosted API), with the official `openai` client.

The key comes from the env var KUBETUNE_JUDGE_API_KEY (the operator sets it from judge.apiKeySecretRef with a
secretKeyRef: never in the config, argv or logs). One chat completion per sample, temperature 0 and seeded; the
judge answers a score from 0 to 10, read as the first number from 0 to 10 in its reply, and divided by 10. A sample
the judge does not score (an error after the client's retries, or no number in the reply) has no judge score; an
endpoint that answers none of the first samples is given up on (the metric is then empty), so that a judge that is
down does not hold the job for retries x samples.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Sequence

from kubetune.api.constants import ENV_JUDGE_API_KEY
from kubetune.api.evaluation import Judge

log = logging.getLogger(__name__)

TIMEOUT_SECONDS = 60  # per request
GIVE_UP_AFTER = 3  # consecutive failures at the start: the endpoint is down or refuses us
SYSTEM = ("You grade answers. Rubric:\n{rubric}\n\nReply with the score only: one number from 0 (worst) to 10 "
          "(best).")
USER = "Prompt:\n{prompt}\n\n{reference}Answer to grade:\n{answer}\n\nScore (0-10):"
_SCORE = re.compile(r"(?<![\d.])(10(?:\.0+)?|\d(?:\.\d+)?)(?![\d.]*\d)")


def parse_score(text: str | None) -> float | None:
    """The first number from 0 to 10 in the judge's reply, as 0-1; None if there is none."""
    match = _SCORE.search(text or "")
    return round(float(match.group(1)) / 10, 4) if match else None


class JudgeClient:
    def __init__(self, judge: Judge, seed: int, client=None):
        from openai import OpenAI

        self.judge, self.seed = judge, seed
        self.client = client or OpenAI(base_url=judge.endpoint, api_key=os.environ.get(ENV_JUDGE_API_KEY) or "none",
                                       timeout=TIMEOUT_SECONDS, max_retries=2)

    def score_one(self, prompt: str, reference: str | None, answer: str) -> float | None:
        reference_text = f"Reference answer:\n{reference}\n\n" if reference else ""
        reply = self.client.chat.completions.create(
            model=self.judge.model, temperature=0, seed=self.seed, max_tokens=16,
            messages=[{"role": "system", "content": SYSTEM.format(rubric=self.judge.rubric)},
                      {"role": "user", "content": USER.format(prompt=prompt, reference=reference_text, answer=answer)}])
        return parse_score(reply.choices[0].message.content if reply.choices else None)

    def score(self, prompts: Sequence[str], references: Sequence[str | None], answers: Sequence[str],
              deadline: float) -> list[float | None]:
        """Per-sample judge scores (None where there is none), until `deadline` (time.monotonic())."""
        from openai import OpenAIError

        out: list[float | None] = []
        failures = 0
        for prompt, reference, answer in zip(prompts, references, answers):
            if time.monotonic() > deadline or (failures >= GIVE_UP_AFTER and not any(s is not None for s in out)):
                out.append(None)
                continue
            try:
                out.append(self.score_one(prompt, reference, answer))
                failures = 0 if out[-1] is not None else failures + 1
            except OpenAIError as exc:
                failures += 1
                out.append(None)
                if failures == 1 or failures == GIVE_UP_AFTER:
                    log.warning("evaluation: judge %s (%s) failed: %s", self.judge.endpoint, self.judge.model,
                                type(exc).__name__)
        unscored = sum(1 for s in out if s is None)
        if unscored:
            log.warning("evaluation: the judge scored %d of %d answers", len(out) - unscored, len(out))
        return out
