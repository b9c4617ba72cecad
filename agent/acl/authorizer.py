"""ACL decisions: rules + resource + access level → allowed or not. Pure and deterministic.

Consul's order: an exact rule beats any prefix rule, the longest prefix rule beats shorter ones, and
within one name `deny` beats everything (policies are merged first, see rules.merge). A resource no
rule covers falls to the default policy ("allow" or "deny"); the default never grants ACL management.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from proconsul.agent.acl.errors import PermissionDenied
from proconsul.agent.acl.rules import DENY, LIST, READ, SINGLETONS, WRITE, Rule, Rules

_GRANTS = {WRITE: (READ, LIST, WRITE), LIST: (READ, LIST), READ: (READ,), DENY: ()}


def grants(level: str, access: str) -> bool:
    """Whether an access level set by a rule grants the access asked for (Consul's `enforce`)."""
    return access in _GRANTS.get(level, ())


@dataclass
class _Segments:
    exact: dict[str, Rule]
    prefix: dict[str, Rule]
    lengths: list[int] = field(default_factory=list)  # distinct prefix lengths, longest first

    def __post_init__(self) -> None:
        self.lengths = sorted({len(p) for p in self.prefix}, reverse=True)

    def lookup(self, name: str) -> Rule | None:
        rule = self.exact.get(name)
        return rule if rule is not None else self.longest_prefix(name)

    def longest_prefix(self, name: str) -> Rule | None:
        n = len(name)
        for length in self.lengths:
            if length <= n:
                rule = self.prefix.get(name[:length])
                if rule is not None:
                    return rule
        return None


class Authorizer:
    """Answers "may this token do `access` on `kind` `name`?" for one resolved token."""

    def __init__(self, rules: Rules, *, default_allow: bool, accessor: str = "", description: str = "") -> None:
        self.accessor = accessor
        self.description = description
        self.default_allow = default_allow
        kinds = set(rules.exact) | set(rules.prefix)
        self._segments = {k: _Segments(dict(rules.exact.get(k, {})), dict(rules.prefix.get(k, {}))) for k in kinds}
        self._singletons = dict(rules.singletons)
        self._reads_all: dict[str, bool] = {}

    # ------------------------------------------------------------------ decisions
    def _decide(self, level: str | None, access: str) -> bool:
        if level is None or level == "":
            return self.default_allow
        return grants(level, access)

    def allowed(self, kind: str, name: str, access: str) -> bool:
        """`kind` is a segmented resource (key, service, node, session, agent, event, query)."""
        seg = self._segments.get(kind)
        rule = seg.lookup(name) if seg is not None else None
        return self._decide(rule.access if rule else None, access)

    def intention_allowed(self, service: str, access: str) -> bool:
        """The `intentions` level of the service rule that covers `service` (the destination)."""
        seg = self._segments.get("service")
        rule = seg.lookup(service) if seg is not None else None
        return self._decide(rule.intentions if rule else None, access)

    def singleton_allowed(self, kind: str, access: str) -> bool:
        """operator, acl, keyring, mesh, peering; mesh and peering fall back to operator as in Consul."""
        if kind not in SINGLETONS:
            raise ValueError(f"unknown ACL resource {kind!r}")
        level = self._singletons.get(kind)
        if level is None and kind in ("mesh", "peering"):
            level = self._singletons.get("operator")
        if level is None and kind == "acl":
            return False  # the default policy never grants ACL management
        return self._decide(level, access)

    def key_write_prefix(self, prefix: str) -> bool:
        """Write on every key under `prefix` (a recursive delete): the covering rule grants write and no
        rule under the prefix takes it away (Consul's KeyWritePrefix)."""
        seg = self._segments.get("key")
        if seg is None:
            return self.default_allow
        for table in (seg.exact, seg.prefix):
            for name, rule in table.items():
                if name.startswith(prefix) and not (table is seg.prefix and name == prefix) and \
                        not grants(rule.access, WRITE):
                    return False
        rule = seg.longest_prefix(prefix)
        return self._decide(rule.access if rule else None, WRITE)

    def reads_all(self, kind: str) -> bool:
        """True when every name of `kind` is readable: list filtering can then be skipped."""
        hit = self._reads_all.get(kind)
        if hit is None:
            seg = self._segments.get(kind)
            if seg is None:
                hit = self.default_allow
            else:
                root = seg.prefix.get("")
                base = grants(root.access, READ) if root is not None else self.default_allow
                rules = list(seg.exact.values()) + list(seg.prefix.values())
                hit = base and all(grants(r.access, READ) for r in rules)
            self._reads_all[kind] = hit
        return hit

    # ------------------------------------------------------------------ raising forms
    def require(self, kind: str, name: str, access: str) -> None:
        if not self.allowed(kind, name, access):
            raise PermissionDenied(self.accessor, kind, access, name)

    def require_intention(self, service: str, access: str) -> None:
        if not self.intention_allowed(service, access):
            raise PermissionDenied(self.accessor, "intention", access, service)

    def require_singleton(self, kind: str, access: str) -> None:
        if not self.singleton_allowed(kind, access):
            raise PermissionDenied(self.accessor, kind, access)


class AllowAll(Authorizer):
    """ACLs disabled: everything is allowed, including ACL management (there is none to guard)."""

    def __init__(self) -> None:
        super().__init__(Rules(), default_allow=True)

    def singleton_allowed(self, kind: str, access: str) -> bool:
        return True
