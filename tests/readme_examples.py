"""The README's SQL examples, run for real.

Every ```sql block of README.md is a psql transcript: statements, each
followed by what psql printed for it. This runs the blocks in order, in one
psql session, in a fresh database (tenancy_readme) of the test cluster,

and compares what psql prints now with what the README says, so the docs
cannot drift from the code (tests/test_readme.py).

    python tests/readme_examples.py --update   # rewrite the README's outputs from a real run

Values that differ from run to run (ids, timestamps, durations, pids) are
masked before comparing, and runs of spaces are treated as one (a masked value
may change a column's width). A block whose info string is `sql not-checked`
is shown but not run; say in the text why.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
HOST = os.environ.get("TENANCY_TEST_HOST", "/var/tmp/tenancy-test")
PORT = os.environ.get("TENANCY_TEST_PORT", "5498")
PG_BIN = os.environ.get("TENANCY_PG_BIN", "/usr/lib/postgresql/15/bin")
DB = "tenancy_readme"

FENCE = re.compile(r"^```(.*)$")
# a statement starts with a key word (or is a psql meta-command); anything
# else outside a statement is what psql printed, as is a bare command tag
STATEMENT_START = re.compile(
    r"^(SELECT|INSERT|UPDATE|DELETE|CREATE|ALTER|DROP|BEGIN|COMMIT|ROLLBACK|SET|RESET|WITH|DO|GRANT|"
    r"REVOKE|TABLE|VALUES|CALL|EXPLAIN|COPY|TRUNCATE|ANALYZE|VACUUM|SAVEPOINT|RELEASE|COMMENT|LOCK|--)\b")
COMMAND_TAG = re.compile(r"^[A-Z]+( [A-Z]+)*( \d+)*$")
STATEMENT_END = re.compile(r";\s*(--.*)?$")


class Block:
    def __init__(self, start, end, info, lines):
        self.start, self.end, self.info, self.lines = start, end, info, lines

    @property
    def checked(self):
        return self.info.split()[:1] == ["sql"] and "not-checked" not in self.info

    def statements(self):
        """The input lines of the transcript: a statement runs from a line
        that is not output to the line that ends it (outside $$ bodies)."""
        out, in_stmt, dollar = [], False, False
        for line in self.lines:
            if not in_stmt and line.startswith("\\"):
                out.append(line)  # a psql meta-command is one line
                continue
            if not in_stmt and (not STATEMENT_START.match(line) or COMMAND_TAG.match(line)):
                continue
            in_stmt = True
            out.append(line)
            if line.count("$$") % 2 == 1:
                dollar = not dollar
            if not dollar and (STATEMENT_END.search(line) or line.rstrip().endswith("\\gset")):
                in_stmt = False
        return out


def blocks(text):
    lines = text.split("\n")
    found, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if m and m.group(1).startswith("sql"):
            j = i + 1
            while not lines[j].startswith("```"):
                j += 1
            found.append(Block(i, j, m.group(1).strip(), lines[i + 1:j]))
            i = j
        elif m:  # another fenced block: skip it whole
            j = i + 1
            while not lines[j].startswith("```"):
                j += 1
            i = j
        i += 1
    return found


def psql(*args, db="postgres"):
    cmd = [f"{PG_BIN}/psql", "-X", "-h", HOST, "-p", PORT, "-U", "postgres", "-d", db, *args]
    done = subprocess.run(cmd, capture_output=True, text=True)
    return done.stdout + done.stderr


def fresh_database():
    psql("-c", f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
    psql("-c", f"CREATE DATABASE {DB}")


MARK = "@@ end of block @@"


def run_all(checked):
    """What psql prints for the blocks' statements, echoing each (-a), with
    errors in their place (one stream, as pg_regress runs psql). One session
    for all of them, so a psql variable set in one block (\\gset) serves the
    next; a marker between blocks splits the transcript again."""
    script = "".join("\n".join(b.statements()) + f"\n\\echo {MARK}\n" for b in checked)
    cmd = (f"{PG_BIN}/psql -X -a -h {HOST} -p {PORT} -U postgres -d {DB} "
           f"-v SHOW_CONTEXT=never -P footer=off 2>&1")
    out = subprocess.run(["sh", "-c", cmd], input=script, capture_output=True, text=True)
    lines = [line for line in out.stdout.split("\n") if line != f"\\echo {MARK}"]
    outputs, current = [], []
    for line in lines:
        if line == MARK:
            while current and current[-1] == "":
                current.pop()
            outputs.append(current)
            current = []
        else:
            current.append(line)
    assert len(outputs) == len(checked), f"psql stopped early:\n{out.stdout[-2000:]}"
    return outputs


MASKS = [
    # the roles of a database carry its OID, which differs from run to run
    (re.compile(r"\bt\d+_"), "t<oid>_"),
    (re.compile(r"\b(tenancy_(?:admin|all_tenants|owner|shared)_)\d+"), r"\1<oid>"),
    (re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"), "<uuid>"),
    (re.compile(r"\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d(\.\d+)?([+-]\d\d(:\d\d)?)?"), "<time>"),
    (re.compile(r'("[a-z_]*(_ms|seconds|pid)[a-z_]*": )-?\d+(\.\d+)?'), r"\1<n>"),
    (re.compile(r"\b\d+(\.\d+)? ms\b"), "<n> ms"),
]


def normalize(lines):
    out = []
    for line in lines:
        for pattern, repl in MASKS:
            line = pattern.sub(repl, line)
        line = re.sub(r"\s+", " ", line).strip()
        if re.fullmatch(r"[-+ ]+", line):
            line = "---"
        if line:
            out.append(line)
    return out


def check_all():
    """(block, expected, actual) for every checked block that differs."""
    fresh_database()
    checked = [b for b in blocks(README.read_text()) if b.checked]
    return [(b, b.lines, actual) for b, actual in zip(checked, run_all(checked))
            if normalize(actual) != normalize(b.lines)]


def update():
    fresh_database()
    lines = README.read_text().split("\n")
    # from the end, so earlier line numbers stay valid
    checked = [b for b in blocks("\n".join(lines)) if b.checked]
    results = list(zip(checked, run_all(checked)))
    for b, actual in reversed(results):
        lines[b.start + 1:b.end] = [line.rstrip() for line in actual]
    README.write_text("\n".join(lines))
    print(f"rewrote {len(results)} blocks of {README}")


if __name__ == "__main__":
    if sys.argv[1:] == ["--update"]:
        update()
    else:
        bad = check_all()
        for b, want, got in bad:
            print(f"README.md line {b.start + 1}:")
            print("  README:\n    " + "\n    ".join(want))
            print("  now:\n    " + "\n    ".join(got))
        sys.exit(1 if bad else 0)
