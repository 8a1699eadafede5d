"""OneFlow 7 elasticity: the expression grammar, elasticity and scheduled policies, and their validation,
as pure functions (no I/O, no clock of its own) that the flow engine calls.

Matched against OpenNebula/one at f847cf2e (the pinned OCA 7.5.80 of shared/upstream; read, not copied):

- ``src/oca/ruby/opennebula/flow/grammar.treetop`` and the compiled ``grammar.rb`` (treetop 1.6 runtime,
  ``compiled_parser.rb``): the expression language, its parse errors and the text it logs;
- ``src/flow/lib/models/vmrole.rb``: ``scale?``, ``scale_time?``, ``scale_attributes?``, ``scale_rule``,
  ``calculate_new_cardinality``; ``src/flow/lib/models/role.rb``: ``info_nodes``, ``update_cooldown``,
  ``set_state`` (leaving ``true_evals`` out on SCALING);
- ``src/flow/lib/ServiceAutoScaler.rb``: every ``autoscaler_interval`` seconds, for each service in RUNNING,
  each role's ``scale?``; the policies (with their counters) and the cooldown are written back
  (``LifeCycleManager.update_role_policies``), then a non-zero difference becomes ``scale_action``;
- ``src/oca/ruby/opennebula/flow/service_template.rb`` ``validate_vmvalues`` and ``validator.rb``: the
  checks and messages at template create/update/instantiate;
- the ``parse-cron`` gem 0.1.4 (github:siebertm/parse-cron ``lib/cron_parser.rb``), which OneFlow uses for
  ``recurrence``: a small port here, because croniter's day-of-month/day-of-week rules and stepping differ.

Interface for the engine (everything else is internal):

``parse_expression(text) -> Expression``
    raises :class:`ExpressionError` whose ``reason`` is treetop's ``failure_reason`` ("Expected one of
    ... at line 1, column 7 (byte 7) after ...") and ``position`` the 0-based offset.
``Expression.evaluate(vms) -> (bool, str)``
    over the role's VMs (:class:`VmView`), as upstream: e.g. ``(True, "CPU[85.0] > 80")``.
``VmView.from_vm_hash(vm_hash, monitoring=None)``
    a VM as ``XMLElement#to_hash`` gives it (``{"VM": {...}}``), with the VM's last monitoring record
    (``MONITORING``) as ``info_nodes`` merges it in.
``evaluate_role(role, vms, now, default_cooldown=300, tz=None) -> RoleDecision``
    one autoscaler pass over one role's JSON body (not modified). ``RoleDecision.write_to(role)`` stores
    the updated policies and cooldown as ``update_role_policies`` does; when ``decision.cardinality`` is
    not None the engine then runs its ``scale_action`` with that cardinality and ``force=False``.
``clear_true_evals(role)``
    what ``Role#set_state(SCALING)`` does to the counters: call it when a role enters SCALING.
``validate_role(role)``
    ``validate_vmvalues``: raises :class:`PolicyError` with OneFlow's message (HTTP 400).
``validate_policy_fields(role)``
    the schema part of the same check (types, enums, minimums) with ``validator.rb``'s messages;
    ``validate_template(template)`` runs both over a template's vm roles (for the factory's checks; this
    module imports only the standard library, so it can move under hostkit/ if the factory needs it).
``CronSchedule(text).next_after(timestamp, tz=None)``
    parse-cron's ``next``.

``AUTOSCALER_INTERVAL`` and ``DEFAULT_COOLDOWN`` are oneflow-server.conf's defaults; the engine may run
faster (the test cloud's clock), and evaluates only services in RUNNING.
"""

from __future__ import annotations

import calendar
import copy
import datetime as dt
import decimal
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

AUTOSCALER_INTERVAL = 90  # oneflow-server.conf :autoscaler_interval:
DEFAULT_COOLDOWN = 300  # oneflow-server.conf :default_cooldown:
ADJUST_TYPES = ("CHANGE", "CARDINALITY", "PERCENTAGE_CHANGE")
VM_ACTIVE = 3  # VirtualMachine STATE ACTIVE
LCM_RUNNING = 3  # LCM_STATE RUNNING


class ExpressionError(ValueError):
    """An expression that OneFlow's grammar does not accept."""

    def __init__(self, text: str, reason: str, position: int) -> None:
        super().__init__(reason)
        self.text = text
        self.reason = reason
        self.position = position


class PolicyError(ValueError):
    """``Validator::ParseException`` raised for a role's policies: OneFlow answers 400 with the message."""


# ============================================================================================ Ruby values
_TO_F = re.compile(r"\s*([+-]?(?:\d+(?:_\d+)*(?:\.\d+(?:_\d+)*)?|\.\d+(?:_\d+)*)(?:[eE][+-]?\d+(?:_\d+)*)?)")
_TO_I = re.compile(r"\s*([+-]?\d+(?:_\d+)*)")


def ruby_to_f(text: str) -> float:
    """Ruby's ``String#to_f``: the leading decimal number (underscores between digits), else 0.0."""
    match = _TO_F.match(text)
    return float(match.group(1).replace("_", "")) if match else 0.0


def ruby_to_i(value: Any) -> int:
    """Ruby's ``to_i`` on what a JSON body holds: nil is 0, strings give their leading integer."""
    if value is None or isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if math.isfinite(value) else 0
    if isinstance(value, str):
        match = _TO_I.match(value)
        return int(match.group(1).replace("_", "")) if match else 0
    return 0


def ruby_float_str(value: float) -> str:
    """Ruby's ``Float#to_s``: shortest digits, fixed notation for exponents -4 < e <= 16 ("2.0", "0.5")."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    if value == 0:
        return "-0.0" if math.copysign(1.0, value) < 0 else "0.0"
    sign, digits_t, exponent = decimal.Decimal(repr(value)).as_tuple()
    digits = "".join(map(str, digits_t)).rstrip("0")
    exponent = int(exponent) + (len(digits_t) - len(digits))
    decpt = len(digits) + exponent
    prefix = "-" if sign else ""
    if decpt < -3 or decpt > 16:
        return f"{prefix}{digits[0]}.{digits[1:] or '0'}e{decpt - 1:+03d}"
    if decpt <= 0:
        return f"{prefix}0.{'0' * -decpt}{digits}"
    if decpt >= len(digits):
        return f"{prefix}{digits}{'0' * (decpt - len(digits))}.0"
    return f"{prefix}{digits[:decpt]}.{digits[decpt:]}"


def _round_half_away(value: float) -> int:
    """Ruby's ``Float#round`` with no digits: halves go away from zero."""
    magnitude = abs(value)
    whole = math.floor(magnitude)
    if magnitude - whole >= 0.5:
        whole += 1
    return int(math.copysign(whole, value)) if whole else 0


def _to_f_able(value: Any) -> float | None:
    """The value as ``to_f`` reads it, or None where Ruby's ``respond_to?(:to_f)`` is false."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        return ruby_to_f(value)
    return None  # a vector (Hash) or a repeated attribute (Array)


# ============================================================================================ the VMs
@dataclass(frozen=True)
class VmView:
    """What the grammar reads of one VM of the role: its state and four attribute sections, in the order
    ``grammar.rb`` looks an attribute up (USER_TEMPLATE, MONITORING, TEMPLATE, the VM's own elements)."""

    vm_id: int
    state: int
    lcm_state: int
    user_template: Mapping[str, Any] = field(default_factory=dict)
    monitoring: Mapping[str, Any] = field(default_factory=dict)
    template: Mapping[str, Any] = field(default_factory=dict)
    top: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_vm_hash(cls, vm_hash: Mapping[str, Any], monitoring: Mapping[str, Any] | None = None) -> VmView:
        """From ``{"VM": {...}}`` (``XMLElement#to_hash``); ``monitoring`` replaces the VM's MONITORING as
        ``Role#info_nodes`` does with the pool's last monitoring record."""
        vm = vm_hash.get("VM", vm_hash)

        def section(value: Any) -> Mapping[str, Any]:
            return value if isinstance(value, Mapping) else {}

        return cls(
            vm_id=ruby_to_i(vm.get("ID")),
            state=ruby_to_i(vm.get("STATE")),
            lcm_state=ruby_to_i(vm.get("LCM_STATE")),
            user_template=section(vm.get("USER_TEMPLATE")),
            monitoring=section(monitoring if monitoring is not None else vm.get("MONITORING")),
            template=section(vm.get("TEMPLATE")),
            top=vm,
        )

    @property
    def running(self) -> bool:
        return self.state == VM_ACTIVE and self.lcm_state == LCM_RUNNING

    def lookup(self, name: str) -> Any:
        """The first section that holds ``name`` with a Ruby-truthy value (not nil, not false)."""
        for section in (self.user_template, self.monitoring, self.template, self.top):
            value = section.get(name)
            if value is not None and value is not False:
                return value
        return None


def average(name: str, vms: Sequence[VmView]) -> tuple[float | None, str]:
    """``variable.result``: the mean over RUNNING VMs that have the attribute, rounded to 2 decimals
    (half away from zero), and its log text ``NAME[value]``, or ``NAME[--]`` (None) when none has it."""
    total = 0.0
    count = 0
    for vm in vms:
        if not vm.running:
            continue
        number = _to_f_able(vm.lookup(name))
        if number is not None:
            total += number
            count += 1
    if count == 0:
        return None, f"{name}[--]"
    mean = total / count
    # Ruby raises FloatDomainError on a non-finite mean and the autoscaler pass dies; keep the value instead
    value = _round_half_away(mean * 100) / 100.0 if math.isfinite(mean * 100) else mean
    return value, f"{name}[{ruby_float_str(value)}]"


# ============================================================================================ the grammar
# Parse tree. Each node evaluates to (value, text) as the grammar's ``result`` methods do.
@dataclass(frozen=True)
class _Number:
    value: int | float

    def result(self, vms: Sequence[VmView]) -> tuple[Any, str]:
        text = ruby_float_str(self.value) if isinstance(self.value, float) else str(self.value)
        return self.value, text


@dataclass(frozen=True)
class _Variable:
    text: str  # as written, quotes included: upstream upcases text_value, so "cpu" looks up '"CPU"'

    def result(self, vms: Sequence[VmView]) -> tuple[Any, str]:
        return average(self.text.upper(), vms)


_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "==": lambda a, b: a == b,
    "=": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
    "<>": lambda a, b: a != b,
    ">=": lambda a, b: a >= b,
    ">": lambda a, b: a > b,
    "<=": lambda a, b: a <= b,
    "<": lambda a, b: a < b,
}


@dataclass(frozen=True)
class _Compare:
    op: str
    left: Any
    right: Any

    def result(self, vms: Sequence[VmView]) -> tuple[Any, str]:
        left, left_text = self.left.result(vms)
        right, right_text = self.right.result(vms)
        text = f"{left_text} {self.op} {right_text}"
        if left is None or right is None:  # an attribute no VM has: false, never 0
            return False, text
        return _COMPARE[self.op](left, right), text


@dataclass(frozen=True)
class _Logic:
    op: str  # && & || |
    left: Any
    right: Any

    def result(self, vms: Sequence[VmView]) -> tuple[Any, str]:
        left, left_text = self.left.result(vms)
        right, right_text = self.right.result(vms)
        value = (left and right) if self.op in ("&&", "&") else (left or right)
        return bool(value), f"{left_text} {self.op} {right_text}"


@dataclass(frozen=True)
class _Not:
    inner: Any

    def result(self, vms: Sequence[VmView]) -> tuple[Any, str]:
        value, text = self.inner.result(vms)
        return not value, f"!{text}"


@dataclass(frozen=True)
class _Paren:
    inner: Any

    def result(self, vms: Sequence[VmView]) -> tuple[Any, str]:
        value, text = self.inner.result(vms)
        return value, f"({text})"


@dataclass(frozen=True)
class Expression:
    """A parsed elasticity expression."""

    text: str
    root: Any

    def evaluate(self, vms: Sequence[VmView]) -> tuple[bool, str]:
        value, text = self.root.result(vms)
        return bool(value), text


def _quoted(literal: str) -> str:
    """How treetop names a string terminal it expected: '&&', and '\\'' for the single quote."""
    return "'\\''" if literal == "'" else f"'{literal}'"


class _Parser:
    """A packrat PEG parser with the rule order, memoisation and failure bookkeeping of treetop's compiled
    ``ElasticityGrammar``: the same inputs are accepted and a failure names the same position and the same
    list of expected terminals as OneFlow's ``parser.failure_reason``.

    Grammar (``grammar.treetop``; note ``&&``/``||`` are right-associative with no precedence, so
    ``A && B || C`` is ``A && (B || C)``, and ``!`` negates the whole expression after it)::

        expression  <- space (boolean_exp / logic_cond) space
        boolean_exp <- logic_cond space ('&&' / '&') space expression
                     / logic_cond space ('||' / '|') space expression
        logic_cond  <- operand space comp_op space operand
                     / '!' space expression
                     / '(' space expression space ')'
        comp_op     <- '==' / '=' / '!=' / '<>' / '>=' / '>' / '<=' / '<'
        operand     <- number / variable
        number      <- '-'? [0-9]+ '.' [0-9]+ / '-'? [0-9]+
        variable    <- '"' [a-zA-Z] [0-9a-zA-Z_]* '"' / "'" [a-zA-Z] [0-9a-zA-Z_]* "'"
                     / [a-zA-Z] [0-9a-zA-Z_]*
        space       <- ' '*
    """

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.max_fail = 0
        self.failures: list[tuple[str, bool]] = []
        self.cache: dict[tuple[str, int], tuple[Any, int]] = {}

    # ------------------------------------------------------------------ terminals
    def fail(self, expected: str, unexpected: bool = False) -> None:
        if self.pos < self.max_fail:
            return
        if self.pos > self.max_fail:
            self.max_fail = self.pos
            self.failures = []
        self.failures.append((expected, unexpected))

    def literal(self, text: str) -> bool:
        if self.text.startswith(text, self.pos):
            self.pos += len(text)
            return True
        self.fail(_quoted(text))
        return False

    def char(self, allowed: Callable[[str], bool], label: str) -> bool:
        if self.pos < len(self.text) and allowed(self.text[self.pos]):
            self.pos += 1
            return True
        self.fail(label)
        return False

    def digits(self) -> bool:
        """[0-9]+"""
        start = self.pos
        while self.char(_is_digit, "[0-9]"):
            pass
        return self.pos > start

    # ------------------------------------------------------------------ rules
    def rule(self, name: str, body: Callable[[], Any]) -> Any:
        key = (name, self.pos)
        if key in self.cache:
            node, end = self.cache[key]
            if node is not None:
                self.pos = end
            return node
        node = self.choice(body)
        self.cache[key] = (node, self.pos)
        return node

    def choice(self, *alternatives: Callable[[], Any]) -> Any:
        """Treetop's ordered choice: the node of the first alternative that matches; one that does not
        leaves the position where it was."""
        for alternative in alternatives:
            start = self.pos
            node = alternative()
            if node is not None:
                return node
            self.pos = start
        return None

    def expression(self) -> Any:
        def body() -> Any:
            self.space()
            node = self.boolean_exp()
            if node is None:
                node = self.logic_cond()
            if node is None:
                return None
            self.space()
            return node

        return self.rule("expression", body)

    def boolean_exp(self) -> Any:
        def alternative(ops: tuple[str, str]) -> Any:
            left = self.logic_cond()
            if left is not None:
                self.space()
                op = ops[0] if self.literal(ops[0]) else (ops[1] if self.literal(ops[1]) else None)
                if op is not None:
                    self.space()
                    right = self.expression()
                    if right is not None:
                        return _Logic(op, left, right)
            return None

        return self.rule(
            "boolean_exp",
            lambda: self.choice(lambda: alternative(("&&", "&")), lambda: alternative(("||", "|"))),
        )

    def logic_cond(self) -> Any:
        def comparison() -> Any:
            left = self.operand()
            if left is not None:
                self.space()
                op = self.comp_op()
                if op is not None:
                    self.space()
                    right = self.operand()
                    if right is not None:
                        return _Compare(op, left, right)
            return None

        def negation() -> Any:
            if self.literal("!"):
                self.space()
                inner = self.expression()
                if inner is not None:
                    return _Not(inner)
            return None

        def parenthesis() -> Any:
            if self.literal("("):
                self.space()
                inner = self.expression()
                if inner is not None:
                    self.space()
                    if self.literal(")"):
                        return _Paren(inner)
            return None

        return self.rule("logic_cond", lambda: self.choice(comparison, negation, parenthesis))

    def comp_op(self) -> str | None:
        def body() -> str | None:
            for op in ("==", "=", "!=", "<>", ">=", ">", "<=", "<"):
                if self.literal(op):
                    return op
            return None

        return self.rule("comp_op", body)

    def operand(self) -> Any:
        return self.rule("operand", lambda: self.number() or self.variable())

    def number(self) -> Any:
        def decimal_number() -> Any:
            start = self.pos
            self.literal("-")
            if self.digits() and self.literal(".") and self.digits():
                return _Number(float(self.text[start : self.pos]))
            return None

        def integer() -> Any:
            start = self.pos
            self.literal("-")
            if self.digits():
                return _Number(int(self.text[start : self.pos]))
            return None

        return self.rule("number", lambda: self.choice(decimal_number, integer))

    def variable(self) -> Any:
        def name() -> bool:
            if not self.char(_is_alpha, "[a-zA-Z]"):
                return False
            while self.char(_is_word, "[0-9a-zA-Z_]"):
                pass
            return True

        def quoted(quote: str) -> Any:
            start = self.pos
            if self.literal(quote) and name() and self.literal(quote):
                return _Variable(self.text[start : self.pos])
            return None

        def bare() -> Any:
            start = self.pos
            if name():
                return _Variable(self.text[start : self.pos])
            return None

        return self.rule("variable", lambda: self.choice(lambda: quoted('"'), lambda: quoted("'"), bare))

    def space(self) -> bool:
        def body() -> bool:
            while self.literal(" "):
                pass
            return True

        return self.rule("space", body)

    # ------------------------------------------------------------------ entry
    def parse(self) -> Any:
        node = self.expression()
        if self.pos != len(self.text):
            if self.pos > self.max_fail:
                self.fail("<END OF INPUT>", unexpected=True)
            return None
        return node

    def failure_reason(self) -> str:
        """treetop's ``CompiledParser#failure_reason``."""
        names = []
        for expected, unexpected in self.failures:
            label = ("something other than " if unexpected else "") + expected
            if label not in names:
                names.append(label)
        listed = names[0] if len(self.failures) == 1 else "one of " + ", ".join(names)
        index = self.max_fail
        line = self.text[:index].count("\n") + 1
        newline = self.text.rfind("\n", 0, index)
        column = 1 if index == 0 else (index - newline if newline >= 0 else index + 1)
        after = f" after {self.text[self.pos : index]}" if index > 0 else ""
        return f"Expected {listed} at line {line}, column {column} (byte {index + 1}){after}"


def _is_digit(char: str) -> bool:
    return "0" <= char <= "9"


def _is_alpha(char: str) -> bool:
    return "a" <= char <= "z" or "A" <= char <= "Z"


def _is_word(char: str) -> bool:
    return _is_alpha(char) or _is_digit(char) or char == "_"


def parse_expression(text: str) -> Expression:
    """Parse an elasticity expression; :class:`ExpressionError` carries upstream's failure reason."""
    if not isinstance(text, str):
        raise ExpressionError(str(text), f"the expression must be a string, not {type(text).__name__}", 0)
    parser = _Parser(text)
    root = parser.parse()
    if root is None:
        raise ExpressionError(text, parser.failure_reason(), parser.max_fail)
    return Expression(text, root)


# ============================================================================================ time
_TIME = re.compile(
    r"\s*(?:(?P<date>(?P<y>\d{4})-(?P<mo>\d{1,2})-(?P<d>\d{1,2}))"
    r"(?:[ T](?P<time1>\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?))?|(?P<time2>\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?))"
    r"\s*(?P<zone>Z|UTC|GMT|[+-]\d{2}:?\d{2})?\s*",
    re.IGNORECASE,
)


def parse_start_time(text: str, now: int, tz: dt.tzinfo | None = None) -> int:
    """``start_time`` as ``scale_time?`` reads it: all digits = epoch seconds (``to_i``), else Ruby's
    ``Time.parse``. Of Time.parse's many forms this takes the ones OneFlow documents: ``YYYY-MM-DD``,
    ``YYYY-MM-DD hh:mm[:ss]``, ``YYYY-MM-DDThh:mm:ss`` with an optional ``Z``/``UTC``/``+hh:mm`` zone, and
    ``hh:mm[:ss]`` (today). Without a zone the time is local (``tz``, default the process's local zone),
    as Ruby's. Anything else raises ValueError (OneFlow would accept a few more spellings)."""
    if re.search(r"^\d+$", text, re.MULTILINE):
        return ruby_to_i(text)
    match = _TIME.fullmatch(text)
    if not match:
        raise ValueError(f"not a time: {text!r}")
    zone_text = match.group("zone")
    if zone_text is None:
        zone = tz
    elif zone_text.upper() in ("Z", "UTC", "GMT"):
        zone = dt.UTC
    else:
        sign = -1 if zone_text[0] == "-" else 1
        digits = zone_text[1:].replace(":", "")
        zone = dt.timezone(sign * dt.timedelta(hours=int(digits[:2]), minutes=int(digits[2:])))
    if match.group("date"):
        day = dt.date(int(match.group("y")), int(match.group("mo")), int(match.group("d")))
        clock = match.group("time1") or "0:00"
    else:
        day = dt.datetime.fromtimestamp(now, zone).date()
        clock = match.group("time2")
    parts = clock.split(":")
    seconds = float(parts[2]) if len(parts) > 2 else 0.0
    moment = dt.datetime(
        day.year, day.month, day.day, int(parts[0]), int(parts[1]), int(seconds), tzinfo=zone
    )
    return int(moment.timestamp())


def _format_time(timestamp: int, tz: dt.tzinfo | None) -> str:
    """Ruby's ``Time#to_s``: ``2026-12-02 05:00:00 +0000``."""
    return dt.datetime.fromtimestamp(timestamp, tz).astimezone(tz).strftime("%Y-%m-%d %H:%M:%S %z")


# ============================================================================================ cron
_CRON_ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_CRON_NAMES = [
    ("jan", "1"), ("feb", "2"), ("mar", "3"), ("apr", "4"), ("may", "5"), ("jun", "6"),
    ("jul", "7"), ("aug", "8"), ("sep", "9"), ("oct", "10"), ("nov", "11"), ("dec", "12"),
    ("sun", "0"), ("mon", "1"), ("tue", "2"), ("wed", "3"), ("thu", "4"), ("fri", "5"), ("sat", "6"),
]  # fmt: skip
_CRON_RANGES = {"minute": (0, 59), "hour": (0, 23), "dom": (1, 31), "month": (1, 12), "dow": (0, 7)}
_CRON_ELEMENT = re.compile(r"(\d+)(?:-(\d+)(?:/(\d+))?)?")


class CronSchedule:
    """A ``recurrence`` as parse-cron 0.1.4 reads it: five fields (a sixth is ignored), ``*``, ``*/n``,
    ``a``, ``a-b``, ``a-b/n`` and lists; month and day names; ``@hourly``-style aliases. When both
    day-of-month and day-of-week are restricted a day matching either runs (Vixie cron); Sunday is 0 or
    7. It is stricter than the gem in one way: a value outside its field's range, or a field that matches
    nothing, is an error here, where the gem fails later or runs at a time nobody asked for.
    """

    def __init__(self, text: str) -> None:
        if not isinstance(text, str):
            raise ValueError("not a valid cronline")
        if text == "@reboot":
            raise ValueError("Can't predict last/next run of @reboot")
        source = _CRON_ALIASES.get(text, text)
        fields = _ruby_split(source)
        if not 5 <= len(fields) <= 6:
            raise ValueError("not a valid cronline")
        lowered = source.lower()
        for name, number in _CRON_NAMES:
            lowered = lowered.replace(name, number)
        tokens = _ruby_split(lowered)
        self.fields: dict[str, tuple[list[int], str]] = {}
        for (name, (low, high)), token in zip(_CRON_RANGES.items(), tokens, strict=False):
            values = self._element(token, low, 6 if name == "dow" else high)
            if not values:
                raise ValueError(f"the {name} field {token!r} matches nothing")
            if values[0] < low or values[-1] > high:
                raise ValueError(f"the {name} field {token!r} leaves {low}-{high}")
            self.fields[name] = (values, token)
        self._days: dict[tuple[int, int], list[int]] = {}

    @staticmethod
    def _element(token: str, low: int, high: int) -> list[int]:
        values: list[int] = []
        for part in token.split(","):
            if part.startswith("*"):
                step = ruby_to_i(part[2:]) if len(part) > 1 else 1
                if step == 0:
                    raise ValueError(f"a step of 0 in {token!r}")
                values += _stepped(low, high, step)
                continue
            match = _CRON_ELEMENT.fullmatch(part)
            if not match:
                raise ValueError(f"Bad Vixie-style specification {part}")
            first = int(match.group(1))
            if match.group(3) is not None:
                step = int(match.group(3))
                if step == 0:
                    raise ValueError(f"a step of 0 in {token!r}")
                values += _stepped(first, int(match.group(2)), step)
            elif match.group(2) is not None:
                values += _stepped(first, int(match.group(2)), 1)
            else:
                values.append(first)
        return sorted(values)

    def _month_days(self, year: int, month: int) -> list[int]:
        """``interpolate_weekdays``: the days of that month the dom/dow fields allow."""
        key = (year, month)
        if key not in self._days:
            mdays, mday_field = self.fields["dom"]
            wdays, wday_field = self.fields["dow"]
            valid_m, valid_w = set(mdays), set(wdays)
            if not (mday_field == "*" and wday_field == "*"):
                if mday_field == "*":
                    valid_m = set()
                if wday_field == "*":
                    valid_w = set()
            if 7 in valid_w:
                valid_w.add(0)
            days = []
            for day in range(1, calendar.monthrange(year, month)[1] + 1):
                weekday = (dt.date(year, month, day).weekday() + 1) % 7  # Sunday = 0
                if day in valid_m or weekday in valid_w:
                    days.append(day)
            self._days[key] = days
        return self._days[key]

    def next_after(self, timestamp: int, tz: dt.tzinfo | None = None) -> int:
        """``CronParser#next(Time.at(timestamp))``: the first run strictly after that minute, local time."""
        now = dt.datetime.fromtimestamp(timestamp, tz)
        t = {"year": now.year, "month": now.month, "day": now.day, "hour": now.hour, "min": now.minute}
        months = self.fields["month"][0]
        if t["month"] not in months:
            self._nudge_month(t)
            t["day"] = 0
        if t["day"] not in self._month_days(t["year"], t["month"]):
            self._nudge_date(t)
            t["hour"] = -1
        if t["hour"] not in self.fields["hour"][0]:
            self._nudge_hour(t)
            t["min"] = -1
        self._nudge_minute(t)
        # Time.local: a month the fields leave without a day gives day nil, which Ruby reads as 1
        moment = dt.datetime(t["year"], t["month"], t["day"] or 1, t["hour"], t["min"], tzinfo=tz)
        return int(moment.timestamp())

    def _nudge(
        self, t: dict[str, Any], key: str, field: str, carry: Callable[[dict[str, Any]], None]
    ) -> None:
        """parse-cron's ``nudge_<field>``: ``t[key]`` moves to the field's next allowed value; past the
        last it wraps to the first and ``carry`` moves the next larger unit on."""
        allowed = self.fields[field][0]
        following = _best_next(t[key], allowed)
        t[key] = following if following is not None else allowed[0]
        if following is None:
            carry(t)

    def _nudge_month(self, t: dict[str, Any]) -> None:
        self._nudge(t, "month", "month", _next_year)
        days = self._month_days(t["year"], t["month"])
        t["day"] = days[0] if days else None

    def _nudge_date(self, t: dict[str, Any]) -> None:
        days = self._month_days(t["year"], t["month"])
        following = _best_next(t["day"] or 0, days)
        t["day"] = following if following is not None else (days[0] if days else None)
        if following is None:
            self._nudge_month(t)

    def _nudge_hour(self, t: dict[str, Any]) -> None:
        self._nudge(t, "hour", "hour", self._nudge_date)

    def _nudge_minute(self, t: dict[str, Any]) -> None:
        self._nudge(t, "min", "minute", self._nudge_hour)


def _next_year(t: dict[str, Any]) -> None:
    t["year"] += 1


def _ruby_split(text: str) -> list[str]:
    """Ruby's ``split(/\\s+/)``: a leading empty field is kept, trailing ones are dropped."""
    parts = re.split(r"\s+", text)
    while parts and parts[-1] == "":
        parts.pop()
    return parts


def _stepped(first: int, last: int, step: int) -> list[int]:
    """parse-cron's ``stepped_range`` over an inclusive range (empty when last < first or step < 0)."""
    count = (last - first) // step
    return [first + step * i for i in range(count + 1)] if count >= 0 else []


def _best_next(current: int, allowed: Sequence[int]) -> int | None:
    return next((value for value in sorted(allowed) if value > current), None)


# ============================================================================================ policies
@dataclass
class RoleDecision:
    """One autoscaler pass over one role.

    ``diff``: nodes to add (>0) or remove (<0); ``cardinality``: the target for ``scale_action`` (None
    when diff is 0); ``cooldown``: the value ``update_role_policies`` stores in the role's ``cooldown``
    (None: leave it); the policies with their new ``last_eval``/``true_evals``/``expression_evaluated``;
    ``messages``: (level, text) lines upstream logs (``D`` debug, ``I`` info).
    """

    role: str
    diff: int
    cardinality: int | None
    cooldown: int | None
    elasticity_policies: list[dict[str, Any]] | None
    scheduled_policies: list[dict[str, Any]] | None
    messages: list[tuple[str, str]]

    def write_to(self, role: dict[str, Any]) -> None:
        """``LifeCycleManager#update_role_policies``: non-empty policy lists and a non-nil cooldown."""
        if self.elasticity_policies:
            role["elasticity_policies"] = copy.deepcopy(self.elasticity_policies)
        if self.scheduled_policies:
            role["scheduled_policies"] = copy.deepcopy(self.scheduled_policies)
        if self.cooldown is not None:
            role["cooldown"] = self.cooldown


def clear_true_evals(role: dict[str, Any]) -> None:
    """``Role#set_state(SCALING)``: every elasticity policy's ``true_evals`` counter is dropped."""
    for policy in role.get("elasticity_policies") or []:
        if isinstance(policy, dict):
            policy.pop("true_evals", None)


def new_cardinality(role: Mapping[str, Any], policy: Mapping[str, Any]) -> int:
    """``calculate_new_cardinality``: CHANGE adds ``adjust``; CARDINALITY sets it; PERCENTAGE_CHANGE adds
    ``adjust``% of the cardinality (truncated, at least 1, at least ``min_adjust_step``; note a 0%% change
    counts as -1, as upstream's sign test does). A positive adjust stops at max(cardinality, max_vms), a
    negative one at min_vms; an adjust of 0 is not clamped."""
    cardinality = ruby_to_i(role.get("cardinality"))
    adjust = ruby_to_i(policy.get("adjust"))
    upper = max(cardinality, ruby_to_i(role.get("max_vms")))
    lower = ruby_to_i(role.get("min_vms"))
    kind = str(policy.get("type") or "").upper()
    if kind == "CHANGE":
        target = cardinality + adjust
    elif kind == "PERCENTAGE_CHANGE":
        step = ruby_to_i(policy.get("min_adjust_step"))
        change = cardinality * adjust / 100.0
        sign = 1 if change > 0 else -1
        magnitude = 1 if abs(change) < 1 else int(abs(change))
        target = cardinality + sign * max(magnitude, step)
    elif kind == "CARDINALITY":
        target = adjust
    else:
        return cardinality
    if adjust > 0:
        target = min(target, upper)
    elif adjust < 0:
        target = max(target, lower)
    return target


def _scale_time(
    role: Mapping[str, Any],
    policy: dict[str, Any],
    now: int,
    tz: dt.tzinfo | None,
    log: list[tuple[str, str]],
) -> tuple[int, Any]:
    """``scale_time?``: the first pass only records ``last_eval``; later passes fire when the planned time
    (``start_time``, or ``recurrence``'s next run after the last pass) falls in (last pass, now]."""
    last_eval = ruby_to_i(policy.get("last_eval"))
    policy["last_eval"] = now
    if last_eval == 0:
        return 0, None
    if policy.get("adjust") is None:
        return 0, None
    start_time = policy.get("start_time")
    if isinstance(start_time, str) and start_time:
        try:
            planned = parse_start_time(start_time, now, tz)
        except (ValueError, OverflowError):
            return 0, None
    else:
        recurrence = policy.get("recurrence")
        if not isinstance(recurrence, str) or not recurrence:
            return 0, None
        try:
            planned = CronSchedule(recurrence).next_after(last_eval, tz)
        except (ValueError, OverflowError):
            return 0, None
    if last_eval < planned <= now:
        name = role.get("name")
        log.append(("D", f"Role {name} : scheduled scalability for {_format_time(planned, tz)} triggered"))
        return new_cardinality(role, policy) - ruby_to_i(role.get("cardinality")), policy.get("cooldown")
    return 0, policy.get("cooldown")


def _scale_attributes(
    role: Mapping[str, Any],
    policy: dict[str, Any],
    vms: Sequence[VmView],
    now: int,
    log: list[tuple[str, str]],
) -> tuple[int, Any]:
    """``scale_attributes?``: at most once per ``period`` seconds; ``period_number`` true evaluations in a
    row (a false one resets the count) trigger the policy."""
    period = ruby_to_i(policy.get("period"))
    period_number = ruby_to_i(policy.get("period_number"))
    last_eval = ruby_to_i(policy.get("last_eval"))
    true_evals = ruby_to_i(policy.get("true_evals"))
    if now < last_eval + period:
        return 0, 0
    policy["last_eval"] = now
    cardinality = ruby_to_i(role.get("cardinality"))
    target = cardinality
    new_evals = 0
    value, text = _scale_rule(policy.get("expression"), vms)
    if value:
        new_evals = min(true_evals + 1, period_number)
        if new_evals >= period_number:
            log.append(("D", f"Role {role.get('name')} : elasticy policy {text} triggered"))
            target = new_cardinality(role, policy)
    policy["true_evals"] = new_evals
    policy["expression_evaluated"] = text
    return target - cardinality, policy.get("cooldown")


def _scale_rule(expression: Any, vms: Sequence[VmView]) -> tuple[bool, str | None]:
    if not expression:
        return False, None
    try:
        parsed = parse_expression(expression)
    except ExpressionError as error:
        return False, f"Parse error. '{expression}': {error.reason}"
    return parsed.evaluate(vms)


def evaluate_role(
    role: Mapping[str, Any],
    vms: Sequence[VmView],
    now: int,
    *,
    default_cooldown: int = DEFAULT_COOLDOWN,
    tz: dt.tzinfo | None = None,
) -> RoleDecision:
    """``ServiceAutoScaler#apply_scaling_policies`` for one role of a RUNNING service at time ``now``
    (epoch seconds): scheduled policies first, in order, then elasticity policies, the first that asks for
    a change wins (those after it are not evaluated, so keep their counters); then the implicit rule that
    brings the cardinality up to ``min_vms`` with no cooldown. ``role`` is not modified."""
    work = copy.deepcopy(dict(role))
    if work.get("cooldown") is None:  # VMRole#initialize
        work["cooldown"] = default_cooldown
    cardinality = ruby_to_i(work.get("cardinality"))
    log: list[tuple[str, str]] = []
    scheduled = work.get("scheduled_policies") or []
    elastic = work.get("elasticity_policies") or []
    diff, cooldown = 0, None
    for policy in scheduled:
        diff, cooldown = _scale_time(work, policy, now, tz, log)
        if diff != 0:
            break
    else:
        for policy in elastic:
            diff, cooldown = _scale_attributes(work, policy, vms, now, log)
            if diff == 0:
                continue
            if cooldown is None:
                cooldown = work.get("cooldown")
            if cooldown is None:
                cooldown = default_cooldown
            break
        else:
            minimum = ruby_to_i(work.get("min_vms"))
            diff, cooldown = (minimum - cardinality, 0) if cardinality < minimum else (0, 0)
    if diff == 0:
        cooldown = None
    else:
        log.append(("I", f"Role {work.get('name')} needs to scale {diff} nodes"))
    return RoleDecision(
        role=str(work.get("name")),
        diff=diff,
        cardinality=cardinality + diff if diff else None,
        cooldown=ruby_to_i(cooldown) if cooldown is not None else None,
        elasticity_policies=work.get("elasticity_policies") or None,
        scheduled_policies=work.get("scheduled_policies") or None,
        messages=log,
    )


# ============================================================================================ validation
def validate_role(role: Mapping[str, Any]) -> None:
    """``ServiceTemplate.validate_vmvalues``, with its messages (upstream's missing space before "must" is
    kept, so that clients matching them see the same text)."""
    name = role.get("name")
    cardinality = ruby_to_i(role.get("cardinality"))
    if role.get("min_vms") is not None and ruby_to_i(role["min_vms"]) > cardinality:
        raise PolicyError(f"Role '{name}' 'cardinality' must be greater than or equal to 'min_vms'")
    if role.get("max_vms") is not None and ruby_to_i(role["max_vms"]) < cardinality:
        raise PolicyError(f"Role '{name}' 'cardinality' must be lower than or equal to 'max_vms'")
    if (role.get("elasticity_policies") or role.get("scheduled_policies")) and (
        role.get("min_vms") is None or role.get("max_vms") is None
    ):
        raise PolicyError(
            f"Role '{name}' with  'elasticity_policies' or 'scheduled_policies'must define both 'min_vms' "
            "and 'max_vms'"
        )
    for index, policy in enumerate(role.get("elasticity_policies") or []):
        expression = policy.get("expression")
        if expression is None or expression == "":
            raise PolicyError(f"Role '{name}', elasticity policy #{index} 'expression' cannot be empty")
        try:
            parse_expression(expression)
        except ExpressionError as error:
            raise PolicyError(
                f"Role '{name}', elasticity policy #{index} 'expression' parse error: {error.reason}"
            ) from None
    for index, policy in enumerate(role.get("scheduled_policies") or []):
        start_time, recurrence = policy.get("start_time"), policy.get("recurrence")
        if start_time is not None:
            if recurrence is not None:
                raise PolicyError(
                    f"Role '{name}', scheduled policy #{index} must define 'start_time' or 'recurrence', "
                    "but not both"
                )
            try:
                parse_start_time(str(start_time), 0)
            except (ValueError, OverflowError):
                raise PolicyError(
                    f"Role '{name}', scheduled policy #{index} 'start_time' is not a valid Time. Try with "
                    "YYYY-MM-DD hh:mm:ss or 0YYY-MM-DDThh:mm:ssZ"
                ) from None
        elif recurrence is not None:
            try:
                CronSchedule(str(recurrence)).next_after(0, dt.UTC)
            except (ValueError, OverflowError):
                raise PolicyError(
                    f"Role '{name}', scheduled policy #{index} 'recurrence' is not a valid cron expression"
                ) from None
        else:
            raise PolicyError(
                f"Role '{name}', scheduled policy #{index} needs to define either 'start_time' or "
                "'recurrence'"
            )


_INTEGER = re.compile(r"\s*[+-]?(0[xX][0-9a-fA-F_]+|0[bB][01_]+|\d[\d_]*)\s*")
_POLICY_FIELDS: dict[str, list[tuple[str, str, dict[str, Any]]]] = {
    "elasticity_policies": [
        ("type", "string", {"required": True, "enum": ADJUST_TYPES}),
        ("adjust", "integer", {"required": True}),
        ("min_adjust_step", "integer", {"minimum": 1}),
        ("period_number", "integer", {"minimum": 0}),
        ("period", "integer", {"minimum": 0}),
        ("expression", "string", {"required": True}),
        ("cooldown", "integer", {"minimum": 0}),
    ],
    "scheduled_policies": [
        ("type", "string", {"required": True, "enum": ADJUST_TYPES}),
        ("adjust", "integer", {"required": True}),
        ("min_adjust_step", "integer", {"minimum": 1}),
        ("start_time", "string", {}),
        ("recurrence", "string", {}),
    ],
}
_ROLE_FIELDS = (("min_vms", 0), ("max_vms", 0), ("cooldown", 0))


def _ruby_integer(value: Any) -> int | None:
    """Ruby's ``Integer()``: integers, integral strings, floats (truncated); None where it raises."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if math.isfinite(value) else None
    if isinstance(value, str) and (match := _INTEGER.fullmatch(value)):
        text = value.strip().replace("_", "")
        return int(text, 0) if match.group(1)[:2].lower() in ("0x", "0b") else int(text)
    return None


def validate_policy_fields(role: Mapping[str, Any]) -> None:
    """The policy part of OneFlow's role schema (service_template.rb ROLE_SCHEMA, checked by
    validator.rb): ``min_vms``/``max_vms``/``cooldown`` integers >= 0; each policy an object whose ``type``
    is one of CHANGE, CARDINALITY, PERCENTAGE_CHANGE, ``adjust`` an integer, ``min_adjust_step`` >= 1,
    ``period``/``period_number``/``cooldown`` >= 0, ``expression`` a string. Raises :class:`PolicyError`."""
    for key, minimum in _ROLE_FIELDS:
        _check_integer(role.get(key), key, minimum)
    for kind, fields in _POLICY_FIELDS.items():
        policies = role.get(kind)
        if policies is None or policies is False:
            continue
        if not isinstance(policies, list):
            raise PolicyError(f"KEY: '{kind}' must be an Array;")
        for policy in policies:
            if not isinstance(policy, dict):
                raise PolicyError(f"KEY: '{kind}' must be an Object;")
            for key, kind_of, rules in fields:
                value = policy.get(key)
                if value is None or value is False:
                    if rules.get("required"):
                        dump = json.dumps(policy, separators=(",", ":"), ensure_ascii=False)
                        raise PolicyError(
                            f"Mandatory document key '{key} ({kind_of})' is missing from {dump}"
                        )
                    continue
                if kind_of == "integer":
                    _check_integer(value, key, rules.get("minimum"))
                elif not isinstance(value, str):
                    raise PolicyError(f"KEY: '{key}' must be a String;")
                elif "enum" in rules and value not in rules["enum"]:
                    raise PolicyError(f"KEY: '{key}' must be one of {', '.join(rules['enum'])};")


def validate_template(template: Mapping[str, Any]) -> None:
    """Both checks for every role of type ``vm`` of a service template, in order (``validate_values``
    runs ``validate_vmvalues`` for vm roles only); for the factory's pre-flight checks of a template."""
    roles = template.get("roles")
    if not isinstance(roles, list):
        raise PolicyError("KEY: 'roles' must be an Array;")
    for role in roles:
        if not isinstance(role, Mapping):
            raise PolicyError("KEY: 'roles' must be an Object;")
        if role.get("type", "vm") == "vm":
            validate_policy_fields(role)
            validate_role(role)


def _check_integer(value: Any, key: str, minimum: int | None) -> None:
    if value is None or value is False:
        return
    number = _ruby_integer(value)
    if number is None:
        raise PolicyError(f"KEY: '{key}' must be an Integer;")
    if minimum is not None and number < minimum:
        raise PolicyError(f"KEY: '{key}' must be greater than or equal to {minimum};")
