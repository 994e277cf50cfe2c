"""Arithmetic requests written the many ways people type them, each with the python call that answers it.

The model's job on these is mostly a *copy* task: every operand goes into the python code digit for digit
(o200k cuts digit runs into chunks of up to three, and those chunks are the same tokens in the question and in
the code), and the final answer quotes what python printed. So the generator varies everything around the
numbers (operator spellings, spacing, frames, punctuation, case, 1-6 digit numbers, negatives, decimals, two
operations) and keeps the code canonical: ``print(a*b)``, or ``print(round(a/b, 4))`` where the result may not
be an integer (true division, decimals), so the answer is rounded sensibly by python, not by the model.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

PY = {"+": "+", "-": "-", "*": "*", "/": "/"}
# Infix spellings of each operator, as typed between two numbers (weights by repetition).
INFIX: dict[str, list[str]] = {
    "+": ["+", "+", "+", "plus", "plus", "add", "and", "+"],
    "-": ["-", "-", "-", "minus", "minus", "−", "take away", "less"],
    "*": ["*", "*", "x", "x", "X", "×", "times", "times", "multiplied by", "multiplied with"],
    "/": ["/", "/", "/", "divided by", "divided by", "over", "÷", "divide by"],
}
# Whole-request phrasings for one operation; {a} and {b} are the operands as typed.
VERBAL: dict[str, list[str]] = {
    "+": [
        "add {a} and {b}",
        "add {a} to {b}",
        "the sum of {a} and {b}",
        "sum of {a} and {b}",
        "sum {a} and {b}",
        "the total of {a} and {b}",
        "{a} and {b} added together",
        "{a} added to {b}",
    ],
    "-": [
        "subtract {b} from {a}",
        "take {b} away from {a}",
        "the difference of {a} and {b}",
        "{b} subtracted from {a}",
        "{a} take away {b}",
        "{a} less {b}",
    ],
    "*": [
        "multiply {a} by {b}",
        "multiply {a} and {b}",
        "the product of {a} and {b}",
        "product of {a} and {b}",
        "{a} multiplied by {b}",
        "{a} times {b}",
    ],
    "/": [
        "divide {a} by {b}",
        "the quotient of {a} and {b}",
        "{a} divided by {b}",
        "{a} over {b}",
        "how many times does {b} go into {a}",
        "split {a} into {b} equal parts: how big is each",
    ],
}
FRAMES = [
    "What is {e}",
    "What's {e}",
    "what's {e}",
    "whats {e}",
    "What is {e}",
    "How much is {e}",
    "how much is {e}",
    "Compute {e}",
    "compute {e}",
    "Calculate {e}",
    "calculate {e}",
    "calc {e}",
    "Evaluate {e}",
    "Solve {e}",
    "{e}",
    "{e}",
    "{e}",
    "{e} =",
    "{e}=",
    "{e} = ?",
    "{e}=?",
    "Can you calculate {e}",
    "Could you work out {e}",
    "Please compute {e}",
    "Tell me {e}",
    "I need {e}",
    "Quick: {e}",
    "Hey, what is {e}",
    "what does {e} equal",
    "What is the result of {e}",
    "Find {e}",
    "Work out {e}",
    "Do {e} for me",
    "what do you get for {e}",
    "Can you tell me what {e} is",
    "Please calculate {e}",
    "what is {e} equal to",
    "Result of {e}",
    "help me with {e}",
    "answer: {e}",
    "math: {e}",
    "How much does {e} come to",
]
VERB_FRAMES = [
    "{v}",
    "{v}",
    "Please {v}",
    "Can you {v}",
    "Could you {v}",
    "{v} for me",
    "I want to {v}",
    "Help me {v}",
]
NOUN_FRAMES = [
    "What is {v}",
    "What's {v}",
    "Compute {v}",
    "Calculate {v}",
    "Find {v}",
    "{v}",
    "Tell me {v}",
    "how much is {v}",
]
SUFFIXES = ["", "", "?", "?", "?", ".", "!", "??", " please", "? thanks", " ?", "?!", " pls", "..."]
FINALS = ["{d} = {r}", "{d} = {r}", "{d} = {r}.", "The answer is {r}.", "{d} is {r}."]


@dataclass
class Problem:
    """One request: the text typed, the code sent to python, what python prints, the answer quoted."""

    question: str
    expr: str  # the python expression (operands exactly as typed)
    display: str  # the expression as the analysis and final write it
    code: str
    operands: list[str]
    units: tuple[str, str] | None = None  # a unit conversion: (from, to)

    def result(self) -> str:
        """What ``print`` writes for ``code`` (without the newline); our own generated expressions only."""
        return str(eval(self.code[len("print(") : -1]))  # noqa: S307

    def answer(self) -> str:
        """The number the final quotes: python's output, with an integral float written as an integer."""
        r = self.result()
        return r[:-2] if r.endswith(".0") else r


def number(rng: random.Random, allow_negative: bool = True) -> str:
    """An operand as typed: 1-6 digit integers (every length common), some decimals, some negatives."""
    if rng.random() < 0.16:
        whole = str(rng.randint(0, 10 ** rng.randint(1, 4) - 1))
        frac = str(rng.randint(1, 10 ** rng.randint(1, 3) - 1))
        if rng.random() < 0.3:
            frac = frac.zfill(rng.randint(1, 3))
        elif rng.random() < 0.85:
            frac = frac.rstrip("0") or "5"
        s = f"{whole}.{frac}"
    else:
        digits = rng.choices([1, 2, 3, 4, 5, 6], weights=[14, 22, 20, 16, 14, 14])[0]
        s = str(rng.randint(10 ** (digits - 1) if digits > 1 else 0, 10**digits - 1))
    if allow_negative and rng.random() < 0.1:
        s = "-" + s
    return s


def _is_zero(s: str) -> bool:
    return float(s) == 0.0


def _py_operand(s: str, first: bool) -> str:
    """Negative operands after the first go into parentheses: ``7-(-3)``, readable and unambiguous."""
    return f"({s})" if s.startswith("-") and not first else s


def _infix(rng: random.Random, op: str) -> str:
    word = rng.choice(INFIX[op])
    if word[0].isalpha():
        return f" {word} "
    return rng.choice([f"{word}", f" {word} ", f" {word} ", f" {word}", f"{word} "])


def _code(expr: str, needs_round: bool) -> str:
    return f"print(round({expr}, 4))" if needs_round else f"print({expr})"


def _case(rng: random.Random, text: str) -> str:
    r = rng.random()
    if r < 0.12:
        return text.lower()
    if r < 0.16:
        return text.upper()
    return text[0].upper() + text[1:] if r < 0.3 and text[0].isalpha() else text


def one_op(rng: random.Random) -> Problem:
    op = rng.choice("+-*/")
    a, b = number(rng), number(rng)
    # a divisor is mostly not much longer than the dividend, as people divide (results not rounded to 0)
    while op == "/" and (_is_zero(b) or (abs(float(b)) > 10 * abs(float(a)) and rng.random() < 0.85)):
        b = number(rng)
    expr = f"{_py_operand(a, True)}{PY[op]}{_py_operand(b, False)}"
    display = f"{a} {op} {b}"
    if rng.random() < 0.3:
        v = rng.choice(VERBAL[op]).format(a=a, b=b)
        frames = NOUN_FRAMES if v.startswith(("the ", "sum of", "product of")) else VERB_FRAMES
        if v.startswith((a, b)):  # "12 times 4": an expression, framed like one
            frames = [f.replace("{e}", "{v}") for f in FRAMES]
        elif v.startswith(("how many", "split")):
            frames = ["{v}"]
        text = rng.choice(frames).format(v=v)
    else:
        text = rng.choice(FRAMES).format(e=f"{a}{_infix(rng, op)}{b}")
    needs_round = op == "/" or "." in a + b
    return Problem(_finish(rng, text), expr, display, _code(expr, needs_round), [a, b])


def two_ops(rng: random.Random) -> Problem:
    """``a op b op c`` with python's precedence, sometimes with parentheses where the user typed them."""
    o1, o2 = rng.choice("+-*/"), rng.choice("+-*/")
    nums = [number(rng, allow_negative=rng.random() < 0.5) for _ in range(3)]
    if rng.random() < 0.5:  # shorter numbers are more typical in longer expressions
        nums = [n[: rng.randint(1, 3)] if n.isdigit() else n for n in nums]
    paren = rng.choice([None, None, "left", "right"])
    for k, o in ((1, o1), (2, o2)):
        while o == "/" and _is_zero(nums[k]):
            nums[k] = number(rng)
    a, b, c = nums
    pa, pb, pc = _py_operand(a, True), _py_operand(b, False), _py_operand(c, False)
    if paren == "left":
        expr, shown = f"({pa}{o1}{pb}){o2}{pc}", f"({a}{_infix(rng, o1)}{b}){_infix(rng, o2)}{c}"
        display = f"({a} {o1} {b}) {o2} {c}"
    elif paren == "right":
        expr, shown = f"{pa}{o1}({pb}{o2}{pc})", f"{a}{_infix(rng, o1)}({b}{_infix(rng, o2)}{c})"
        display = f"{a} {o1} ({b} {o2} {c})"
    else:
        expr, shown = f"{pa}{o1}{pb}{o2}{pc}", f"{a}{_infix(rng, o1)}{b}{_infix(rng, o2)}{c}"
        display = f"{a} {o1} {b} {o2} {c}"
    try:
        eval(expr)  # noqa: S307 - our own expression; a zero divisor inside parentheses is regenerated
    except ZeroDivisionError:
        return two_ops(rng)
    text = rng.choice(FRAMES).format(e=shown)
    needs_round = "/" in expr or "." in expr
    return Problem(_finish(rng, text), expr, display, _code(expr, needs_round), [a, b, c])


def _finish(rng: random.Random, text: str) -> str:
    text = text + (rng.choice(SUFFIXES) if not text.endswith(("=", "?")) else "")
    return _case(rng, text)


def problem(rng: random.Random) -> Problem:
    return two_ops(rng) if rng.random() < 0.22 else one_op(rng)


UNITS: list[tuple[str, str, list[str], float]] = [
    # (from, to, templates, factor)
    ("km", "miles", ["Convert {x} km to miles", "{x} km in miles", "how many miles is {x} km"], 0.621371),
    ("miles", "km", ["How many km is {x} miles?", "convert {x} miles to km", "{x} miles in km"], 1.609344),
    ("kg", "pounds", ["Convert {x} kg to pounds", "{x} kg in lbs", "how many pounds is {x} kg"], 2.204623),
    ("pounds", "kg", ["How many kg are {x} pounds?", "convert {x} lbs to kg", "{x} pounds in kg"], 0.453592),
    ("inches", "cm", ["Convert {x} inches to cm", "{x} inches in cm", "how many cm is {x} inches"], 2.54),
    ("feet", "meters", ["How many meters is {x} feet?", "{x} feet in meters", "convert {x} ft to m"], 0.3048),
]
CELSIUS = [
    "Convert {x} C to Fahrenheit",
    "What is {x} degrees Celsius in Fahrenheit?",
    "{x} celsius in fahrenheit",
]


def conversion(rng: random.Random) -> Problem:
    """A unit conversion: one operand copied into code with a fixed factor, rounded to 2 decimals."""
    if rng.random() < 0.2:
        x = str(rng.randint(-20, 45))
        q = rng.choice(CELSIUS).format(x=x)
        expr, units = f"{x}*9/5+32", ("C", "F")
    else:
        u_from, u_to, templates, factor = rng.choice(UNITS)
        x = number(rng, allow_negative=False) if rng.random() < 0.5 else str(rng.randint(1, 200))
        q = rng.choice(templates).format(x=x)
        expr, units = f"{x}*{factor}", (u_from, u_to)
    return Problem(_finish(rng, q), expr, x, f"print(round({expr}, 2))", [x], units)


def final_text(rng: random.Random, p: Problem) -> str:
    if p.units:
        return f"{p.display} {p.units[0]} is about {p.answer()} {p.units[1]}."
    return rng.choice(FINALS).format(d=p.display, r=p.answer())


__all__ = ["Problem", "conversion", "final_text", "number", "problem"]
