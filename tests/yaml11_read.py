"""Reads YAML with YAML 1.1 rules (PyYAML) and compares it with the JSON documents expected.

    python3 tests/yaml11_read.py stock|kubectl FILE.yaml EXPECTED.json [FILE.yaml EXPECTED.json]...

`stock` reads with PyYAML's own SafeLoader (YAML 1.1 as PyYAML implements it). `kubectl` reads
with PyYAML's parser but go-yaml v2's resolution of plain scalars, which is what kubectl uses
(sigs.k8s.io/yaml): where the two differ, kubectl wins:
  - `y`, `Y`, `n`, `N` are booleans (PyYAML: strings);
  - integers are Go's ParseInt(s, 0, 64) on the text without `_`: `0o17` and `0X1F` are numbers,
    sexagesimal `1:20` is a string (PyYAML: 80);
  - floats match ^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$ (`1e3`; PyYAML needs a dot);
  - timestamps and `=` stay strings (PyYAML: dates, and an error).
EXPECTED.json holds a stream of JSON documents. Floats with no fractional part compare equal
to integers (encoding/json writes 1e3 as 1000). Prints the first difference of each pair that
differs, and exits 1 if any does.
"""
import json
import re
import sys

import yaml

GO_FLOAT = re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$")
GO_INT = re.compile(r"^[-+]?(0[xX][0-9a-fA-F]+|0[oO][0-7]+|0[bB][01]+|0[0-7]*|[1-9][0-9]*)$")


def go_number(text):
    """go-yaml v2's resolve() for a plain scalar that starts with a digit, a sign or a dot."""
    words = {".inf": float("inf"), ".Inf": float("inf"), ".INF": float("inf"),
             "+.inf": float("inf"), "+.Inf": float("inf"), "+.INF": float("inf"),
             "-.inf": float("-inf"), "-.Inf": float("-inf"), "-.INF": float("-inf"),
             ".nan": float("nan"), ".NaN": float("nan"), ".NAN": float("nan")}
    if text in words:
        return words[text]
    if text.startswith("."):
        return float(text) if GO_FLOAT.match(text) else text
    plain = text.replace("_", "")
    if GO_INT.match(plain):
        sign = -1 if plain.startswith("-") else 1
        digits = plain.lstrip("+-")
        if len(digits) > 1 and digits[0] == "0" and digits[1] in "0123456789":
            value = int(digits, 8)
        else:
            value = int(digits, 0)
        value *= sign
        if -(2 ** 63) <= value < 2 ** 64:
            return value
    if GO_FLOAT.match(plain):
        value = float(plain)
        if value not in (float("inf"), float("-inf")):
            return value
    return text


class KubectlLoader(yaml.SafeLoader):
    pass


KubectlLoader.yaml_implicit_resolvers = {}
KubectlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile(r"^(?:y|Y|yes|Yes|YES|n|N|no|No|NO|true|True|TRUE|false|False|FALSE|on|On|ON|off|Off|OFF)$"),
    list("yYnNtTfFoO"))
KubectlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:null", re.compile(r"^(?:~|null|Null|NULL|)$"), ["~", "n", "N", ""])
KubectlLoader.add_implicit_resolver("tag:yaml.org,2002:merge", re.compile(r"^(?:<<)$"), ["<"])
KubectlLoader.add_implicit_resolver(
    "tag:kubectl,number", re.compile(r"^[-+.0-9][-+._0-9a-zA-Z:]*$"), list("-+.0123456789"))


def construct_bool(loader, node):
    return loader.construct_scalar(node) in ("y", "Y", "yes", "Yes", "YES", "true", "True",
                                             "TRUE", "on", "On", "ON")


KubectlLoader.add_constructor("tag:yaml.org,2002:bool", construct_bool)
# `<<` merges only as a key (PyYAML's flatten_mapping, go-yaml's decoder); as a value it is the
# string "<<".
KubectlLoader.add_constructor(
    "tag:yaml.org,2002:merge", lambda loader, node: loader.construct_scalar(node))
KubectlLoader.add_constructor(
    "tag:kubectl,number", lambda loader, node: go_number(loader.construct_scalar(node)))


def normalize(value, path="$"):
    """JSON's view: whole floats as integers, keys as sigs.k8s.io/yaml writes them."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, float):
        if value == value and abs(value) < 1e21 and value == int(value):
            return int(value)
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if isinstance(k, bool):
                key = "true" if k else "false"
            elif isinstance(k, (int, str)):
                key = str(k)
            else:
                raise SystemExit(f"{path}: key {k!r} of type {type(k).__name__}")
            out[key] = normalize(v, f"{path}.{key}")
        return out
    if isinstance(value, list):
        return [normalize(v, f"{path}[{i}]") for i, v in enumerate(value)]
    # A date, a datetime, bytes: not what JSON holds.
    return ("not JSON", type(value).__name__, str(value))


def first_difference(got, want, path="$"):
    if isinstance(got, dict) and isinstance(want, dict):
        for key in sorted(set(got) | set(want)):
            if key not in got:
                return f"{path}.{key}: missing, expected {want[key]!r}"
            if key not in want:
                return f"{path}.{key}: {got[key]!r} not expected"
            diff = first_difference(got[key], want[key], f"{path}.{key}")
            if diff:
                return diff
        return None
    if isinstance(got, list) and isinstance(want, list):
        if len(got) != len(want):
            return f"{path}: {len(got)} items, expected {len(want)}"
        for i, (g, w) in enumerate(zip(got, want)):
            diff = first_difference(g, w, f"{path}[{i}]")
            if diff:
                return diff
        return None
    if type(got) is not type(want) or got != want:
        return f"{path}: read {got!r} ({type(got).__name__}), expected {want!r} ({type(want).__name__})"
    return None


def json_documents(text):
    decoder = json.JSONDecoder()
    docs, i = [], 0
    while True:
        while i < len(text) and text[i].isspace():
            i += 1
        if i >= len(text):
            return docs
        doc, i = decoder.raw_decode(text, i)
        docs.append(doc)


def check(loader, mode, yaml_path, json_path):
    """The first difference between the YAML file read with `loader` and the JSON file."""
    try:
        with open(yaml_path, encoding="utf-8") as f:
            got = [normalize(d) for d in yaml.load_all(f, Loader=loader) if d is not None]
    except yaml.YAMLError as e:
        return f"{yaml_path} cannot be read with {mode} YAML 1.1 rules: {e}"
    with open(json_path, encoding="utf-8") as f:
        want = [normalize(d) for d in json_documents(f.read())]
    diff = first_difference(got, want)
    return diff and f"{yaml_path} read with {mode} YAML 1.1 rules: {diff}"


def main():
    mode, files = sys.argv[1], sys.argv[2:]
    loader = yaml.SafeLoader if mode == "stock" else KubectlLoader
    failed = False
    for yaml_path, json_path in zip(files[::2], files[1::2]):
        problem = check(loader, mode, yaml_path, json_path)
        if problem:
            print(problem)
            failed = True
    sys.exit(1 if failed else 0)


main()
