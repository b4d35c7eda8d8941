"""Batch and schedule sources in /openapi.json as this deployment's settings allow them
(issue 23 item 10): no `path` source and no file:// URL without allowed roots; with public
hosts off, the https hosts of the allow-list. Which addresses a public host name resolves to
is DNS's answer, which no schema can state: with public hosts on, the description says what
is refused (a 422)."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator
from typing import Any

from service.core.settings import BatchSettings

# a branch or tag (service/repos/git_source.py `_REF`, and no ".."): a dot is always
# followed by another character than a dot
GIT_REF_PATTERN = r"^[A-Za-z0-9](\.?[A-Za-z0-9_/-])*\.?$"
# the rest of a URL after its host: no whitespace or control character (U+0085 is whitespace
# to Python, which checks, but not to a JSON Schema pattern's \s)
URL_REST = r"(/[^\s\x00-\x1f\x7f\x85]*)?"
# a public host: a name or an IPv4 address, a port the URL parser accepts, no credentials
PUBLIC_HOST = r"[^/?#@:\s\x00-\x1f\x7f\x85\[\]]+(:[1-9][0-9]{0,3})?"
# a directory below a root, one plain name per segment (no "." or ".." segments)
PATH_REST = r"(/[A-Za-z0-9_-][A-Za-z0-9._-]*)*/?"


def _alternation(items: list[str]) -> str:
    return "(" + "|".join(re.escape(item.rstrip("/")) for item in items) + ")"


def _network(entry: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    try:
        return ipaddress.ip_network(entry, strict=False)
    except ValueError:
        return None


def allowed_https_hosts(batches: BatchSettings) -> list[str] | None:
    """The https hosts a git URL may name, or None when any public host may be named. A
    block of addresses wider than one has too many spellings to list: left out."""
    if batches.git_allow_public_hosts:
        return None
    hosts = []
    for entry in batches.git_allowed_hosts:
        network = _network(entry)
        if network is None:
            hosts.append(entry.lower().rstrip("."))
        elif network.num_addresses == 1:
            address = str(network.network_address)
            hosts.append(f"[{address}]" if network.version == 6 else address)
    return hosts


def git_url_pattern(batches: BatchSettings) -> str | None:
    """The git URLs this deployment accepts (None: none)."""
    options = []
    hosts = allowed_https_hosts(batches)
    if hosts is None:
        options.append("https://" + PUBLIC_HOST + URL_REST)
    elif hosts:
        options.append("https://" + _alternation(hosts) + URL_REST)
    if batches.allowed_roots:
        options.append("file://" + _alternation(batches.allowed_roots) + PATH_REST)
    return "^(" + "|".join(options) + ")$" if options else None


def git_url_description(batches: BatchSettings) -> str:
    hosts = allowed_https_hosts(batches)
    if hosts is None:
        https = ("https://host/...: the host must resolve to public addresses only, or be on "
                 "the operator's allow-list (a 422 otherwise)")
    elif hosts:
        https = "https:// on an allowed host (" + ", ".join(hosts) + ")"
    else:
        https = "no https host is allowed"
    files = ("file:// naming an existing directory under an allowed root"
             if batches.allowed_roots else "no file:// (no allowed roots)")
    return f"{https}; {files}; no credentials in the URL; a shallow clone"


def fit_sources(components: dict, batches: BatchSettings) -> set[str]:
    """Fit the PathSource and GitSource components to the settings; the kinds left."""
    kinds = set()
    path = components.get("PathSource")
    if path is not None and batches.allowed_roots:
        path["properties"]["path"].update(
            pattern="^" + _alternation(batches.allowed_roots) + PATH_REST + "$",
            description="an existing directory under an allowed root ("
                        + ", ".join(batches.allowed_roots) + ")")
        kinds.add("path")
    git = components.get("GitSource")
    pattern = git_url_pattern(batches)
    if git is not None and pattern is not None:
        git["properties"]["url"].update(pattern=pattern,
                                        description=git_url_description(batches))
        ref = git["properties"].get("ref", {})
        for option in ref.get("anyOf", [ref]):
            if option.get("type") == "string":
                option["pattern"] = GIT_REF_PATTERN
        kinds.add("git")
    for name, kind in (("PathSource", "path"), ("GitSource", "git")):
        if kind not in kinds:
            components.pop(name, None)
    return kinds


def walk(node: Any) -> Iterator[dict]:
    """Every object of a JSON value, outermost first."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def restrict_source_unions(schema: dict, kinds: set[str]) -> None:
    """Every `source` union (discriminated by `kind`) offers only the enabled kinds."""
    for part in ("paths", "components"):
        for item in walk(schema.get(part, {})):
            discriminator = item.get("discriminator", {})
            mapping = discriminator.get("mapping", {})
            if discriminator.get("propertyName") != "kind" or not {"path", "git"} & set(mapping):
                continue
            kept = {kind: ref for kind, ref in mapping.items() if kind in kinds}
            if kept:
                discriminator["mapping"] = kept
                item["oneOf"] = [{"$ref": ref} for ref in kept.values()]
            else:  # nothing can be submitted: said, rather than a source that is refused
                item.clear()
                item.update({"not": {}, "description": "no source is enabled on this server "
                                                       "(no allowed root, no allowed git host)"})


def exact_sources(schema: dict, batches: BatchSettings) -> None:
    restrict_source_unions(schema, fit_sources(schema["components"]["schemas"], batches))
