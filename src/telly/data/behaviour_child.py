"""Runs inside a contained child (:func:`telly.sandbox.run_captured`), never imported: one function on the
shared inputs of each signature kind it fits.

It reads the payload (JSON: ``prelude``, ``code``, ``name``, ``kinds`` as ``[[kind, [args, ...]], ...]``,
``steps``) from standard input and writes one JSON line: ``outputs`` (per kind it handles, its outputs on every
input), ``reasons`` (why it handles the others) and ``done`` (how many kinds it got through), or ``excluded``. An
audit hook stops the run at once when anything starts a process, opens a socket or writes to the file system.
A step budget stops a call that runs too long: every Python call and line the function runs counts, and past
``steps`` on one input the run ends with the kinds done so far (the parent starts a new child for the rest).
Counting steps, not seconds, makes the outcome the same on any machine.
"""

import collections.abc
import contextlib
import copy
import itertools
import json
import math
import os
import random
import sys

_RESULT = os.fdopen(os.dup(1), "w")
_NULL = os.open(os.devnull, os.O_WRONLY)
os.dup2(_NULL, 1)  # what the function prints is dropped; the result goes to the saved descriptor
os.dup2(_NULL, 2)
sys.stdout = sys.stderr = open(os.devnull, "w")  # noqa: SIM115 (open for the whole run)
PAYLOAD = json.loads(sys.stdin.read())

FORBIDDEN = {
    "os.system": "calls os.system",
    "subprocess.Popen": "starts a process",
    "os.exec": "starts a process",
    "os.posix_spawn": "starts a process",
    "os.spawn": "starts a process",
    "os.fork": "forks",
    "os.forkpty": "forks",
    "os.kill": "sends a signal",
    "socket.__new__": "opens a socket",
    "os.remove": "removes a file",
    "os.rename": "renames a file",
    "os.mkdir": "makes a folder",
    "os.rmdir": "removes a folder",
    "os.truncate": "writes a file",
    "os.chmod": "changes a file",
    "os.link": "writes a file",
    "os.symlink": "writes a file",
    "shutil.rmtree": "removes a folder",
    "time.sleep": "sleeps",  # waits cost wall time, not steps: the budget would not see them
}
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC


def finish(result):
    _RESULT.write(json.dumps(result, sort_keys=True) + "\n")
    _RESULT.flush()
    os._exit(0)


def guard(event, args):
    if event in FORBIDDEN:
        finish({"excluded": FORBIDDEN[event]})
    if event == "open":
        mode, flags = args[1], args[2]
        if (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
            isinstance(flags, int) and flags & WRITE_FLAGS
        ):
            finish({"excluded": "writes a file"})


class Opaque(Exception):
    pass


OWN = "<string>"  # the file name of this program's code (run with -c); the function's is "<candidate>"
STATE = {"kind": None, "steps": 0, "handled": {}, "reasons": [], "done": 0}


def over_budget():
    """Ends the run at once (a function cannot catch this): the kinds done so far, and this one's reason."""
    if STATE["kind"] is None:
        finish({"excluded": f"does not load: step budget ({PAYLOAD['steps']} steps)"})
    STATE["reasons"].append(f"{STATE['kind']}: step budget ({PAYLOAD['steps']} steps on one input)")
    finish({"outputs": STATE["handled"], "reasons": STATE["reasons"], "done": STATE["done"] + 1})


def count(frame, event, arg):
    STATE["steps"] += 1
    if STATE["steps"] > PAYLOAD["steps"]:
        over_budget()
    return count


def enter(frame, event, arg):
    """The global trace function: counts the calls and lines of every frame but this program's own."""
    if frame.f_code.co_filename == OWN:
        return None
    return count(frame, event, arg)


def traced(fn, *args):
    """``fn(*args)`` with a fresh step budget."""
    STATE["steps"] = 0
    sys.settrace(enter)
    try:
        return fn(*args)
    finally:
        sys.settrace(None)


def canon(value, depth=0):
    """A JSON value that is equal for equal behaviour: ints for integral floats and bools, lists for
    sequences and iterators, sorted lists for sets and dicts."""
    STATE["steps"] += 1  # reading a (long) result is work too: it counts against the same budget
    if STATE["steps"] > PAYLOAD["steps"]:
        over_budget()
    if depth > 30:
        raise Opaque("nested too deep")
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return repr(value)
        return int(value) if value.is_integer() else round(value, 9)
    if isinstance(value, (list, tuple)):
        return [canon(x, depth + 1) for x in value]
    if isinstance(value, (set, frozenset)):
        return sorted((canon(x, depth + 1) for x in value), key=json.dumps)
    if isinstance(value, dict):
        return sorted(([canon(k, depth + 1), canon(v, depth + 1)] for k, v in value.items()), key=json.dumps)
    if isinstance(value, (range, collections.abc.Iterator)):
        items = list(itertools.islice(value, 100001))
        if len(items) > 100000:
            raise Opaque("yields without end")
        return [canon(x, depth + 1) for x in items]
    raise Opaque(f"returns a {type(value).__name__}")


def _run_canon(fn, given):
    return canon(fn(*given))  # inside the budget: a lazy result (generator, map) runs the function's code here


def call(fn, args):
    """The output of one call: its return value, or (returning None) the arguments as it left them."""
    given = copy.deepcopy(args)
    random.seed(0)  # randomised algorithms repeat
    result = traced(_run_canon, fn, given)
    if result is None:  # an in-place algorithm (sorted input too): its output is what it left in its arguments
        return canon(given[0] if len(given) == 1 else given)
    return result


def outputs(fn, kind, inputs):
    """The outputs on every input of a kind, or why there are none."""
    try:
        found = [call(fn, args) for args in inputs]
    except RecursionError:
        return None, f"{kind}: recursion without end"
    except MemoryError:
        return None, f"{kind}: allocates without bound (memory limit)"
    except Opaque as err:
        return None, f"{kind}: {err}"
    except SystemExit:
        return None, f"{kind}: calls sys.exit"
    except BaseException as err:  # noqa: BLE001 (any failure of the function excludes it on this kind)
        return None, f"{kind}: raises {type(err).__name__}"
    if len({json.dumps(o, sort_keys=True) for o in found}) == 1:
        return None, f"{kind}: the same output on every input"
    if all(o == canon(args[0]) for o, args in zip(found, inputs)):
        return None, f"{kind}: returns its input unchanged"
    return found, None


def main():
    sys.addaudithook(guard)
    if PAYLOAD["wheel"]:
        sys.path.insert(0, PAYLOAD["wheel"])  # its own package's modules load from the pinned wheel
    namespace = {"__name__": "telly_behaviour", "__package__": PAYLOAD["package"] or None}
    for statement in PAYLOAD["prelude"]:  # the module's imports and other functions: helpers it may call
        with contextlib.suppress(BaseException):  # a helper that cannot load only matters if it is called
            traced(exec, compile(statement, "<candidate>", "exec"), namespace)
    try:
        traced(exec, compile(PAYLOAD["code"], "<candidate>", "exec"), namespace)
        fn = namespace[PAYLOAD["name"]]
    except BaseException as err:  # noqa: BLE001
        finish({"excluded": f"does not load: {type(err).__name__}"})
    for kind, inputs in PAYLOAD["kinds"]:
        STATE["kind"] = kind
        found, why = outputs(fn, kind, inputs)
        if found is None:
            STATE["reasons"].append(why)
        else:
            STATE["handled"][kind] = found
        STATE["done"] += 1
    finish({"outputs": STATE["handled"], "reasons": STATE["reasons"], "done": STATE["done"]})


main()
