"""RFC 5322 address lists as RFC 3501 models them: groups, source routes, comments.

`email.utils.getaddresses` flattens groups (their names are lost, their members look like
plain recipients), drops obsolete source routes and keeps a comment's parentheses in the
local part of `user (comment)@domain`. IMAP's ENVELOPE keeps all of it: a group is a start
marker (NIL NIL name NIL), its members, an end marker (NIL NIL NIL NIL); a route is the
address's second field. The parser is forgiving, as Dovecot's is: what it cannot read
becomes a plain mailbox rather than an error, and an address without a domain gets the
placeholder Dovecot gives it (a NIL host would read as a group marker).

Values are returned as written (RFC 2047 words not decoded), quoted strings unquoted.
"""

from __future__ import annotations

from typing import NamedTuple

MISSING_MAILBOX = "MISSING_MAILBOX"
MISSING_DOMAIN = "MISSING_DOMAIN"
_SPECIALS = set('()<>[]:;@\\,."')


class Address(NamedTuple):
    """One address as RFC 3501 models it: a group starts with (None, None, name, None) and
    ends with four Nones; `route` is the obsolete source route ("@a,@b")."""

    name: str | None
    route: str | None
    mailbox: str | None
    host: str | None

    @property
    def address(self) -> str:
        if self.mailbox is None or self.host is None:
            return ""
        return f"{self.mailbox}@{self.host}".lower()

    @property
    def is_group_marker(self) -> bool:
        return self.host is None


class _Token(NamedTuple):
    kind: str  # "atom", "quoted", "literal", "comment", or the special character itself
    text: str


def _tokens(value: str) -> list[_Token]:
    out: list[_Token] = []
    position, length = 0, len(value)
    while position < length:
        char = value[position]
        if char in " \t\r\n":
            position += 1
        elif char == "(":
            depth, position, text = 1, position + 1, []
            while position < length and depth:
                char = value[position]
                if char == "\\" and position + 1 < length:
                    text.append(value[position + 1])
                    position += 2
                    continue
                depth += char == "("
                depth -= char == ")"
                if depth:
                    text.append(char)
                position += 1
            out.append(_Token("comment", "".join(text).strip()))
        elif char == '"':
            position, text = position + 1, []
            while position < length and value[position] != '"':
                if value[position] == "\\" and position + 1 < length:
                    position += 1
                if value[position] not in "\r\n":
                    text.append(value[position])
                position += 1
            out.append(_Token("quoted", "".join(text)))
            position += 1
        elif char == "[":
            end = value.find("]", position)
            end = length - 1 if end < 0 else end
            out.append(_Token("literal", value[position : end + 1]))
            position = end + 1
        elif char in _SPECIALS:
            out.append(_Token(char, char))
            position += 1
        else:
            start = position
            while position < length and value[position] not in _SPECIALS and value[position] not in " \t\r\n":
                position += 1
            out.append(_Token("atom", value[start:position]))
    return out


class _Parser:
    def __init__(self, value: str) -> None:
        self.tokens = _tokens(value)
        self.position = 0
        self.comment: str | None = None  # the last comment seen inside the current address

    def peek(self) -> str | None:
        """The kind of the next token, comments skipped (and remembered)."""
        while self.position < len(self.tokens) and self.tokens[self.position].kind == "comment":
            self.comment = self.tokens[self.position].text or self.comment
            self.position += 1
        return self.tokens[self.position].kind if self.position < len(self.tokens) else None

    def take(self) -> _Token:
        self.peek()
        token = self.tokens[self.position]
        self.position += 1
        return token

    def phrase(self) -> str:
        """Words (atoms, quoted strings, and dots, as in "Dr. Martin") up to a special."""
        words: list[str] = []
        while (kind := self.peek()) in ("atom", "quoted", "."):
            token = self.take()
            if kind == "." and words:
                words[-1] += "."
            else:
                words.append(token.text)
        return " ".join(words)

    def dotted(self, kinds: tuple[str, ...]) -> str:
        """A local part or a domain: words joined by dots, whitespace and comments dropped
        ("user . name" is obsolete but allowed); a word after a word ends it."""
        text: list[str] = []
        word_next = True
        while True:
            kind = self.peek()
            if kind == ".":
                word_next = True
            elif not (word_next and kind in kinds):
                return "".join(text)
            else:
                word_next = False
            text.append(self.take().text)

    def addr_spec(self, local: str) -> tuple[str, str]:
        """The rest of an addr-spec whose local part was read: (mailbox, host)."""
        local += self.dotted(("atom", "quoted"))
        host = ""
        if self.peek() == "@":
            self.take()
            host = self.dotted(("atom", "literal"))
        return local or MISSING_MAILBOX, host or MISSING_DOMAIN

    def angle(self) -> tuple[str | None, str, str]:
        """<[route:]addr-spec>, the "<" already read: (route, mailbox, host)."""
        route = None
        if self.peek() == "@":  # obs-route: @a,@b:
            hops = []
            while self.peek() in ("@", ","):
                if self.take().kind == "@":
                    hops.append("@" + self.dotted(("atom", "literal")))
            if self.peek() == ":":
                self.take()
            route = ",".join(hops) or None
        mailbox, host = self.addr_spec("")
        while self.peek() not in (">", None):  # junk before ">": skipped
            self.take()
        if self.peek() == ">":
            self.take()
        return route, mailbox, host

    def mailbox(self, out: list[Address]) -> None:
        """One mailbox (name-addr or addr-spec), appended to `out` unless nothing was there."""
        self.comment = None
        start = self.position
        words = self.phrase()
        kind = self.peek()
        if kind == "<":
            self.take()
            route, mailbox, host = self.angle()
            out.append(Address(words or None, route, mailbox, host))  # comments are not the name here
        elif kind == "@" or (words and self.position > start):
            # addr-spec: read again from the start, the words being the local part
            self.position = start
            self.comment = None
            local = self.dotted(("atom", "quoted"))
            mailbox, host = self.addr_spec(local)
            self.peek()
            out.append(Address(self.comment, None, mailbox, host))
        while self.peek() not in (",", ";", None):  # junk after an address: skipped
            self.take()

    def address_list(self) -> list[Address]:
        out: list[Address] = []
        while (kind := self.peek()) is not None:
            if kind in (",", ";", ">", ")"):
                self.take()
                continue
            start = self.position
            name = self.phrase()
            if self.peek() == ":":  # group: name: members;
                self.take()
                out.append(Address(None, None, name or MISSING_MAILBOX, None))
                while self.peek() not in (";", None):
                    if self.peek() == ",":
                        self.take()
                        continue
                    self.mailbox(out)
                if self.peek() == ";":
                    self.take()
                out.append(Address(None, None, None, None))
                continue
            self.position = start
            before = len(out)
            self.mailbox(out)
            if len(out) == before and self.position == start:  # a token nothing can start with
                self.take()
        return out


def parse_addresses(values: list[str]) -> tuple[Address, ...] | None:
    """The addresses of header values (each a whole address list); None if there are none."""
    found: list[Address] = []
    for value in values:
        found += _Parser(value).address_list()
    return tuple(found) or None


def searchable(addresses: tuple[Address, ...] | None) -> str:
    """What SEARCH FROM/TO/CC/BCC compare with: each address as `name <mailbox@host>`
    and group names, as Dovecot does (comments and routes are not part of an address)."""
    parts = []
    for address in addresses or ():
        if address.host is None:
            if address.mailbox is not None:
                parts.append(address.mailbox)
            continue
        mail = f"{address.mailbox}@{address.host}"
        parts.append(f"{address.name} <{mail}>" if address.name else mail)
    return ", ".join(parts)
