"""Which bundled model is worth talking to: a small fixed prompt set, scored by checks, for every bundled GGUF.

    python -m tests.bench.model_quality [--seeds 3] [--models smollm2-135m,gemma3-270m]

Each prompt is sent the way the service sends it (persona instructions as the system turn, through the
`local` adapter and its worker), once per seed; a check passes or fails per reply. Prints a table and writes
JSON to tests/bench/results/model-quality-<time>.json. The README's "Bundled model" section quotes it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from service.domain import ChatTurn, Completion, FinishReason, Prompt, Role
from service.llm.local import BUNDLED, LocalProvider
from service.personas import PersonaCatalog

RESULTS = Path(__file__).parent / "results"
MAX_TOKENS = 128
Check = Callable[[str, Completion], bool]


def has(*words: str) -> Check:
    return lambda text, _: any(re.search(rf"\b{re.escape(w)}\b", text, re.IGNORECASE) for w in words)


def ends_by_itself(_text: str, completion: Completion) -> bool:
    return completion.finish_reason is FinishReason.STOP


def no_loop(text: str, _completion: Completion) -> bool:
    """No sentence-sized piece repeated three times: the failure mode of small models."""
    pieces = [p.strip().lower() for p in re.split(r"[.!?\n,]", text) if len(p.strip()) > 12]
    return all(pieces.count(p) < 3 for p in pieces)


def not_echoing(system: str) -> Check:
    def check(text: str, _completion: Completion) -> bool:
        sentences = [s.strip() for s in re.split(r"[.!?\n]", system) if len(s.strip()) > 30]
        return not any(s.lower() in text.lower() for s in sentences)

    return check


@dataclass(frozen=True)
class Case:
    name: str
    persona: str  # "" for no persona
    user: str
    checks: dict[str, Check]


def cases(personas: PersonaCatalog) -> list[Case]:
    buddy = personas.instructions("english_buddy")
    tutor = personas.instructions("socratic_tutor")
    return [
        Case("capital", "", "What is the capital of France?", {"answers Paris": has("Paris")}),
        Case("arithmetic", "", "What is 2 + 3? Answer with the number.", {"answers 5": has("5", "five")}),
        Case("colours", "", "Name three colours.", {"names a colour": has("red", "blue", "green", "yellow")}),
        Case(
            "grammar",
            "english_buddy",
            "Yesterday I go to the park with my friend.",
            {"corrects go -> went": has("went"), "does not echo its instructions": not_echoing(buddy)},
        ),
        Case(
            "grammar-2",
            "english_buddy",
            "She don't like coffee.",
            {"corrects don't -> doesn't": has("doesn't", "does not"), "does not echo": not_echoing(buddy)},
        ),
        Case(
            "socratic",
            "socratic_tutor",
            "Why is the sky blue?",
            {"asks a question": lambda text, _: "?" in text, "does not echo": not_echoing(tutor)},
        ),
    ]


def prompt(case: Case, personas: PersonaCatalog, model: str) -> Prompt:
    turns = [ChatTurn(Role.SYSTEM, personas.instructions(case.persona))] if case.persona else []
    return Prompt(model, (*turns, ChatTurn(Role.USER, case.user)), MAX_TOKENS)


HYGIENE: dict[str, Check] = {"ends by itself": ends_by_itself, "no loop": no_loop}


async def score(model: str, seeds: int, personas: PersonaCatalog) -> dict[str, object]:
    passed = total = task_passed = task_total = 0
    rows: list[dict[str, object]] = []
    for seed in range(seeds):
        provider = LocalProvider(model, context_tokens=2048, seed=seed)
        try:
            for case in cases(personas):
                pieces: list[str] = []
                completion = Completion()
                async for item in provider.stream(prompt(case, personas, model)):
                    if isinstance(item, Completion):
                        completion = item
                    else:
                        pieces.append(item)
                text = "".join(pieces)
                results = {name: check(text, completion) for name, check in {**case.checks, **HYGIENE}.items()}
                passed += sum(results.values())
                total += len(results)
                task_passed += sum(results[name] for name in case.checks)
                task_total += len(case.checks)
                rows.append({"seed": seed, "case": case.name, "reply": text, "checks": results})
        finally:
            await provider.aclose()
    return {
        "model": model,
        "passed": passed,
        "total": total,
        "score": passed / total,
        "task_passed": task_passed,
        "task_total": task_total,
        "task_score": task_passed / task_total,
        "replies": rows,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--models", default=",".join(BUNDLED))
    args = parser.parse_args()
    personas = PersonaCatalog.load(None)
    results = [await score(model, args.seeds, personas) for model in args.models.split(",")]
    print(f"{'model':<16} {'task checks':>13} {'all checks':>13}")
    for r in results:
        task = f"{r['task_passed']}/{r['task_total']} {r['task_score']:.0%}"
        print(f"{r['model']:<16} {task:>13} {r['passed']}/{r['total']} {r['score']:.0%}")
    by_case: dict[str, dict[str, str]] = {}
    for result in results:
        for row in result["replies"]:  # type: ignore[attr-defined]
            cell = by_case.setdefault(str(row["case"]), {})
            ok = sum(row["checks"].values())
            cell[str(result["model"])] = cell.get(str(result["model"]), "") + f"{ok}/{len(row['checks'])} "
    for case, cells in by_case.items():
        print(f"  {case:<12} " + "  ".join(f"{m}: {c.strip()}" for m, c in cells.items()))
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS / f"model-quality-{stamp}.json"
    path.write_text(json.dumps({"seeds": args.seeds, "max_tokens": MAX_TOKENS, "results": results}, indent=2))
    print(f"written {path}")


if __name__ == "__main__":
    asyncio.run(main())
