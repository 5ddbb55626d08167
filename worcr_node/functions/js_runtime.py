"""Compiles and calls user functions written in JavaScript (QuickJS, `quickjs` package), sandboxed.

The function process (`child.py`; in tests, the in-process host) calls these one at a time, through
`sandbox.compile_function`. Each compiled function owns one `quickjs.Context` (its own JSRuntime):
memory capped at `Caps.memory` bytes, the C stack used by JS at `STACK_SIZE`, and each eval or
call at `Caps.time` seconds of process CPU time (the binding's interrupt handler compares C
`clock()` with the value it took when that eval/call started: every call gets the full budget, and
CPU time burnt by other threads of the process counts too).

What the code can reach: the ECMAScript built-ins (eval and Function included: they stay in the
same context) and nothing else. This build of QuickJS has no `std`/`os` modules, no `require`,
`process`, `fetch`, `print`, `console`; module syntax is a syntax error in a script, and a dynamic
`import()` only queues a job that is never run (pending jobs are never executed), and the binding
installs no module loader anyway. No Python callable is ever added to the context.

`_PRELUDE` runs before the user's code. It captures the built-ins the privileged side uses (so
user code redefining JSON, Object.prototype, Array.prototype... changes nothing for it) and
returns `kit`, held only by Python: `kit(fn)` makes the caller that parses the arguments (JSON
text, with the original JSON.parse), calls `fn`, and turns the result into JSON text itself (own
enumerable properties only: toJSON and getters on prototypes are not consulted; functions,
symbols, bigints, cycles, more than 32 levels or 10,000 values, strings over 1 MiB are refused).
Every string the caller hands back is flattened first: quickjs-ng keeps long concatenations as
ropes, which the binding cannot convert ("Unknown quickjs tag: -6").

The CPU cap is an interrupt QuickJS checks every 10,000 "polls" (back jumps, calls); it is
uncatchable (try/finally does not run either). Built-in functions are C code and run to their end
between polls, so the prelude also replaces the ones with unbounded or superlinear worst cases:
RegExp.prototype.exec (backtracking) refuses (regexp, subject) pairs whose worst case exceeds
`REGEX_BUDGET` steps; String.prototype indexOf/lastIndexOf/includes/split/replace/replaceAll with
a string pattern refuse more than `SEARCH_BUDGET` character comparisons; Array.prototype methods
refuse lengths over `MAX_LENGTH` (a sparse array or an array-like can claim 2^53 elements) and
their methods that modify refuse array-likes; join, toLocaleString, concat, flat, flatMap are
written in JS, sort without a comparator uses a JS one, String.raw too, and JSON.stringify
without a replacer uses an identity one (so their loops poll). Every wrapper (and every
String.prototype and typed array method) also checks a wall-clock deadline (three times the CPU
budget, plus 20 ms) and throws once it has passed; the call then ends as a "timeout" whatever the
code did with that exception.

What remains are linear C operations on values the memory cap allows (comparing or concatenating
strings of a few MiB, BigInt arithmetic up to ~0.5 s for one operation): each takes up to
milliseconds, and a loop of bare operators runs 10,000 of them between two interrupt checks.
Measured: `for (;;) if (s === t) n++` with two 8 MiB strings overruns a 50 ms cap by 5 s under
the default 32 MiB cap; with 2 MiB strings (what an 8 MiB cap allows) by 0.5 s. Keep the memory
cap of JS functions small if that matters.

The engine is quickjs-ng (the `quickjs-ng` distribution, same `quickjs` module). The archived
`quickjs` package (QuickJS 2021-03-27) crashed the process when a function exhausted its memory
cap through many small allocations (bellard/quickjs#533, a use-after-free on the out-of-memory
path, fixed in quickjs-ng by PR #1472); tests/unit/node/test_function_sandbox.py keeps such memory
bombs in its cases.

QuickJS throws `null` when it cannot even allocate the error object; a thrown null is therefore
reported as a "memory" error (so is a function that really throws null).

A "timeout" or "memory" error rebuilds the context on the next call (user state is lost), and so
does a call from another thread than the one that built it (QuickJS measures its stack from the
thread that created the runtime).
"""

from __future__ import annotations

import json
import math
import re
import threading
from typing import Any

import quickjs

from worcr_node.functions.sandbox import (
    MAX_DEPTH,
    MAX_STRING,
    MAX_VALUES,
    CallError,
    Caps,
    CompileError,
    end_of_source,
    missing_entry,
    token_column,
)

__all__ = ["MAX_LENGTH", "REGEX_BUDGET", "SEARCH_BUDGET", "STACK_SIZE", "JsFunction", "compile_js"]

STACK_SIZE = 256 * 1024  # bytes of C stack for JS (deep recursion: a catchable InternalError)
MAX_LENGTH = 1 << 20  # longest array (or array-like) Array.prototype methods accept
REGEX_BUDGET = 10_000_000  # worst-case backtracking steps allowed for one RegExp exec
SEARCH_BUDGET = 50_000_000  # worst-case character comparisons for one string search
_PRELUDE_LINE = 100_000  # the prelude's code starts at this line: its stack frames are skipped
_ERROR_CHARS = 2000

_PRELUDE = (
    "\n" * (_PRELUDE_LINE - 1)
    + r"""
(() => {
"use strict";
const G = globalThis;
const Obj = Object, Arr = Array, RE = RegExp, Sym = Symbol;
const apply = Reflect.apply, construct = Reflect.construct;
const defineProperty = Obj.defineProperty, getOwnPropertyDescriptor = Obj.getOwnPropertyDescriptor;
const create = Obj.create, objectKeys = Obj.keys, getOwnPropertyNames = Obj.getOwnPropertyNames;
const getPrototypeOf = Obj.getPrototypeOf;
const isArray = Arr.isArray;
const jsonParse = JSON.parse, jsonStringify = JSON.stringify;
const RangeErr = RangeError, TypeErr = TypeError;
const wsHas = WeakSet.prototype.has, wsAdd = WeakSet.prototype.add;
const AP = Arr.prototype, SP = String.prototype, RP = RE.prototype, JS = JSON;
const TAP = getPrototypeOf(Uint8Array.prototype);
const origJoin = AP.join, origConcat = AP.concat, origSlice = SP.slice;
const origIndexOf = SP.indexOf, origExec = RP.exec;
const regexSource = getOwnPropertyDescriptor(RP, "source").get;
const regexSticky = getOwnPropertyDescriptor(RP, "sticky").get;
const symMatch = Sym.match, symReplace = Sym.replace, symSplit = Sym.split;
const symSpreadable = Sym.isConcatSpreadable;
const dateNow = Date.now;
const now = G.__date_clock || (() => dateNow() * 1000);  // wall clock, microseconds
delete G.__date_clock;

const MAX_LENGTH = @MAX_LENGTH@, REGEX_BUDGET = @REGEX_BUDGET@, SEARCH_BUDGET = @SEARCH_BUDGET@;
const MAX_DEPTH = @MAX_DEPTH@, MAX_VALUES = @MAX_VALUES@, MAX_STRING = @MAX_STRING@;
const SLACK = @SLACK_US@;  // microseconds of wall clock a call may take before wrappers throw
const MAX_SAFE = 9007199254740991;

let deadline = Infinity, expired = false;

function tick() {
  if (expired || now() > deadline) {
    expired = true;
    throw new RangeErr("time limit exceeded");
  }
}

function define(o, k, v) {
  defineProperty(o, k, { value: v, writable: true, enumerable: false, configurable: true });
}

function named(name, f) {
  defineProperty(f, "name", { value: name, configurable: true });
  return f;
}

function toLength(v) {
  const n = +v;
  if (!(n > 0)) return 0;
  return n > MAX_SAFE ? MAX_SAFE : n - (n % 1);
}

// Proxies: remembered when made, since an array proxy can answer a different length each time.
const proxies = new WeakSet();
const OrigProxy = G.Proxy, origRevocable = OrigProxy.revocable;
function Proxy(target, handler) {
  if (new.target === undefined) throw new TypeErr("Constructor Proxy requires 'new'");
  const p = construct(OrigProxy, [target, handler]);
  apply(wsAdd, proxies, [p]);
  return p;
}
define(Proxy, "revocable", named("revocable", function (target, handler) {
  const r = origRevocable(target, handler);
  apply(wsAdd, proxies, [r.proxy]);
  return r;
}));
define(G, "Proxy", Proxy);

function realArray(o) { return isArray(o) && !apply(wsHas, proxies, [o]); }

const TOO_LONG = "arrays and array-likes longer than " + MAX_LENGTH +
                 " elements are not supported in functions";

// What an Array.prototype built-in may run on: a real array (its length cannot change before the
// built-in reads it), or a view whose own length is the checked one (reads go through to `self`).
function arrayReceiver(self, mutates) {
  if (self === null || self === undefined) return self;  // the built-in throws
  const t = typeof self;
  if (t !== "object" && t !== "function") {
    if (t === "string" && self.length > MAX_LENGTH) throw new RangeErr(TOO_LONG);
    return self;
  }
  if (realArray(self)) {
    if (self.length > MAX_LENGTH) throw new RangeErr(TOO_LONG);
    return self;
  }
  const len = toLength(self.length);
  if (len > MAX_LENGTH) throw new RangeErr(TOO_LONG);
  if (mutates) {
    throw new TypeErr("Array.prototype methods that modify only take real arrays in functions");
  }
  const view = create(self);
  const d = create(null);
  d.value = len;
  d.writable = true;
  defineProperty(view, "length", d);
  return view;
}

function wrap(proto, name, make) {
  const orig = proto[name];
  define(proto, name, named(name, make(orig)));
}

for (const name of ["every", "some", "forEach", "map", "filter", "reduce", "reduceRight",
                    "find", "findIndex", "indexOf", "lastIndexOf", "includes", "slice",
                    "fill", "pop", "push", "shift", "unshift", "reverse", "splice",
                    "copyWithin"]) {
  const mutates = name === "fill" || name === "pop" || name === "push" || name === "shift" ||
                  name === "unshift" || name === "reverse" || name === "splice" ||
                  name === "copyWithin";
  const search = name === "indexOf" || name === "lastIndexOf" || name === "includes";
  wrap(AP, name, (orig) => function () {
    tick();
    const r = arrayReceiver(this, mutates);
    const x = arguments[0];
    if (search && typeof x === "string" && x.length * toLength(r === null || r === undefined ?
        0 : r.length) > SEARCH_BUDGET) {
      throw new RangeErr("array search too expensive (elements x string length)");
    }
    return apply(orig, r, arguments);
  });
}

function defaultCompare(x, y) {  // what sort does without a comparator (undefined are last)
  tick();
  const a = `${x}`, b = `${y}`;
  return a < b ? -1 : (b < a ? 1 : 0);
}
wrap(AP, "sort", (orig) => function (compare) {
  tick();
  const r = arrayReceiver(this, true);
  return apply(orig, r, [compare === undefined ? defaultCompare : compare]);
});

function toObject(self, what) {
  if (self === null || self === undefined) throw new TypeErr(what + " called on null or undefined");
  return Obj(self);
}

function join(separator) {
  tick();
  const o = toObject(this, "join");
  const len = toLength(o.length);
  if (len > MAX_LENGTH) throw new RangeErr(TOO_LONG);
  const sep = separator === undefined ? "," : `${separator}`;
  const parts = create(null);
  for (let i = 0; i < len; i++) {
    tick();
    const e = o[i];
    parts[i] = e === undefined || e === null ? "" : `${e}`;
  }
  parts.length = len;
  return apply(origJoin, parts, [sep]);
}
function toLocaleString() {
  tick();
  const o = toObject(this, "toLocaleString");
  const len = toLength(o.length);
  if (len > MAX_LENGTH) throw new RangeErr(TOO_LONG);
  const parts = create(null);
  for (let i = 0; i < len; i++) {
    tick();
    const e = o[i];
    parts[i] = e === undefined || e === null ? "" : `${e.toLocaleString()}`;
  }
  parts.length = len;
  return apply(origJoin, parts, [","]);
}
define(AP, "join", named("join", join));
define(AP, "toLocaleString", named("toLocaleString", toLocaleString));
define(TAP, "join", named("join", join));
define(TAP, "toLocaleString", named("toLocaleString", toLocaleString));

function spreadable(e) {
  if (e === null || (typeof e !== "object" && typeof e !== "function")) return false;
  const s = e[symSpreadable];
  return s !== undefined ? !!s : isArray(e);
}
define(AP, "concat", named("concat", function () {
  tick();
  const o = toObject(this, "concat");
  const count = arguments.length;
  let fast = realArray(o), total = fast ? o.length : 0;
  for (let i = 0; fast && i < count; i++) {
    const e = arguments[i];
    if (e !== null && (typeof e === "object" || typeof e === "function")) {
      if (realArray(e)) total += e.length;
      else fast = false;
    } else total += 1;
  }
  if (fast && total <= MAX_LENGTH) return apply(origConcat, o, arguments);
  const a = [];
  let n = 0;
  for (let i = -1; i < count; i++) {
    const e = i < 0 ? o : arguments[i];
    if (spreadable(e)) {
      const len = toLength(e.length);
      if (n + len > MAX_LENGTH) throw new RangeErr(TOO_LONG);
      for (let k = 0; k < len; k++, n++) {
        tick();
        if (k in e) a[n] = e[k];
      }
    } else {
      a[n++] = e;
    }
  }
  a.length = n;
  return a;
}));

function flatten(out, src, depth) {
  const len = toLength(src.length);
  if (len > MAX_LENGTH) throw new RangeErr(TOO_LONG);
  for (let k = 0; k < len; k++) {
    tick();
    if (!(k in src)) continue;
    const e = src[k];
    if (depth > 0 && isArray(e)) flatten(out, e, depth - 1);
    else out[out.length] = e;
  }
}
define(AP, "flat", named("flat", function (depth) {
  tick();
  const o = toObject(this, "flat");
  let d = depth === undefined ? 1 : +depth;
  if (d !== d) d = 0;
  const out = [];
  flatten(out, o, d);
  return out;
}));
define(AP, "flatMap", named("flatMap", function (mapper, thisArg) {
  tick();
  const o = toObject(this, "flatMap");
  if (typeof mapper !== "function") throw new TypeErr("flatMap: the mapper is not a function");
  const len = toLength(o.length);
  if (len > MAX_LENGTH) throw new RangeErr(TOO_LONG);
  const out = [];
  for (let k = 0; k < len; k++) {
    tick();
    if (!(k in o)) continue;
    const e = apply(mapper, thisArg, [o[k], k, o]);
    if (isArray(e)) flatten(out, e, 0);
    else out[out.length] = e;
  }
  return out;
}));

// String.prototype: every method checks the deadline; the searches bound their worst case.
function isRealRegExp(x) {
  try { apply(regexSource, x, []); return x !== RP; } catch (e) { return false; }
}
function isRegExp(x) {
  if (x === null || (typeof x !== "object" && typeof x !== "function")) return false;
  const m = x[symMatch];
  return m !== undefined ? !!m : isRealRegExp(x);
}
function checkSearch(s, p) {
  if (s.length * p.length > SEARCH_BUDGET) {
    throw new RangeErr("string search too expensive (string length x pattern length)");
  }
}
function methodNames(proto) {
  const names = [];
  for (const name of getOwnPropertyNames(proto)) {
    const d = getOwnPropertyDescriptor(proto, name);
    if (name !== "constructor" && name[0] !== "_" && typeof d.value === "function") {
      names[names.length] = name;
    }
  }
  return names;
}
for (const name of methodNames(SP)) {
  if (name === "indexOf" || name === "lastIndexOf" || name === "includes") {
    wrap(SP, name, (orig) => function (search, position) {
      tick();
      if (this === null || this === undefined) return apply(orig, this, arguments);
      const s = `${this}`;
      if (name === "includes" && isRegExp(search)) {
        throw new TypeErr("includes: the argument must not be a regular expression");
      }
      const p = `${search}`;
      checkSearch(s, p);
      return apply(orig, s, [p, position]);
    });
  } else if (name === "split") {
    wrap(SP, name, (orig) => function (separator, limit) {
      tick();
      if (this === null || this === undefined) return apply(orig, this, arguments);
      if (separator !== undefined && separator !== null) {
        const splitter = separator[symSplit];
        if (splitter !== undefined && splitter !== null) {
          return apply(splitter, separator, [this, limit]);
        }
      }
      const s = `${this}`;
      if (separator === undefined) return apply(orig, s, [undefined, limit]);
      const p = `${separator}`;
      checkSearch(s, p);
      return apply(orig, s, [p, limit]);
    });
  } else if (name === "replace" || name === "replaceAll") {
    wrap(SP, name, (orig) => function (searchValue, replaceValue) {
      tick();
      if (this === null || this === undefined) return apply(orig, this, arguments);
      if (searchValue !== undefined && searchValue !== null) {
        if (name === "replaceAll" && isRegExp(searchValue)) {
          const flags = `${searchValue.flags}`;
          if (apply(origIndexOf, flags, ["g"]) < 0) {
            throw new TypeErr("replaceAll must be called with a global RegExp");
          }
        }
        const replacer = searchValue[symReplace];
        if (replacer !== undefined && replacer !== null) {
          return apply(replacer, searchValue, [this, replaceValue]);
        }
      }
      const s = `${this}`;
      const p = `${searchValue}`;
      checkSearch(s, p);
      return apply(orig, s, [p, replaceValue]);
    });
  } else {
    wrap(SP, name, (orig) => function () {
      tick();
      return apply(orig, this, arguments);
    });
  }
}

define(String, "raw", named("raw", function (template) {
  tick();
  const raw = toObject(toObject(template, "String.raw").raw, "String.raw");
  const len = toLength(raw.length);
  if (len > MAX_LENGTH) throw new RangeErr(TOO_LONG);
  const parts = create(null);
  let np = 0;
  for (let i = 0; i < len; i++) {
    tick();
    parts[np++] = `${raw[i]}`;
    if (i + 1 < len && i + 1 < arguments.length) parts[np++] = `${arguments[i + 1]}`;
  }
  parts.length = np;
  return apply(origJoin, parts, [""]);
}));

// Typed arrays: every method checks the deadline; a long sort compares in JS.
const typedLength = getOwnPropertyDescriptor(TAP, "length").get;
function numericCompare(a, b) {
  tick();
  if (a < b) return -1;
  if (a > b) return 1;
  if (a !== a) return b !== b ? 0 : 1;
  if (b !== b) return -1;
  if (a === 0 && b === 0 && typeof a === "number") {
    const ia = 1 / a, ib = 1 / b;
    return ia < ib ? -1 : (ia > ib ? 1 : 0);
  }
  return 0;
}
for (const name of methodNames(TAP)) {
  if (name === "join" || name === "toLocaleString") continue;
  if (name === "sort") {
    wrap(TAP, name, (orig) => function (compare) {
      tick();
      const long = compare === undefined && apply(typedLength, this, []) > MAX_LENGTH;
      return apply(orig, this, [long ? numericCompare : compare]);
    });
  } else {
    wrap(TAP, name, (orig) => function () {
      tick();
      return apply(orig, this, arguments);
    });
  }
}

// RegExp: an upper bound on the backtracking paths for one start position, for a subject of
// length n: a quantified atom with p paths and at most K repetitions gives (K + 1) * p^K, a
// sequence multiplies, a disjunction adds, a backreference counts n + 1.
function regexPaths(src, n) {
  const L = src.length;
  let i = 0;
  function quantifier() {
    const c = src[i];
    let k = -1;
    if (c === "*" || c === "+") { k = Infinity; i++; }
    else if (c === "?") { k = 1; i++; }
    else if (c === "{") {
      let j = i + 1, lo = 0, digits = 0;
      while (j < L && src[j] >= "0" && src[j] <= "9") {
        lo = lo * 10 + (+src[j]);
        j++;
        digits++;
      }
      if (digits > 0 && src[j] === "}") { k = lo; i = j + 1; }
      else if (digits > 0 && src[j] === ",") {
        j++;
        let hi = 0, hiDigits = 0;
        while (j < L && src[j] >= "0" && src[j] <= "9") {
          hi = hi * 10 + (+src[j]);
          j++;
          hiDigits++;
        }
        if (src[j] === "}") { k = hiDigits > 0 ? hi : Infinity; i = j + 1; }
      }
    }
    if (k >= 0 && src[i] === "?") i++;  // lazy
    return k;
  }
  function atom() {
    const c = src[i];
    if (c === "(") {
      i++;
      if (src[i] === "?") {
        i++;
        if (src[i] === "<" && src[i + 1] !== "=" && src[i + 1] !== "!") {
          while (i < L && src[i] !== ">") i++;
          i++;
        } else if (src[i] === "<") i += 2;
        else i++;
      }
      const p = disjunction();
      i++;  // ")"
      return p;
    }
    if (c === "[") {
      i++;
      while (i < L && src[i] !== "]") { if (src[i] === "\\") i++; i++; }
      i++;
      return 1;
    }
    if (c === "\\") {
      const d = src[i + 1];
      i += 2;
      if (d >= "1" && d <= "9") {
        while (i < L && src[i] >= "0" && src[i] <= "9") i++;
        return n + 1;
      }
      if (d === "k" && src[i] === "<") {
        while (i < L && src[i] !== ">") i++;
        i++;
        return n + 1;
      }
      return 1;
    }
    i++;
    return 1;
  }
  function disjunction() {
    let total = 0;
    for (;;) {
      let product = 1;
      while (i < L && src[i] !== "|" && src[i] !== ")") {
        let p = atom();
        const k = quantifier();
        if (k >= 0) {
          const reps = k > n ? n : k;
          p = p <= 1 ? reps + 1 : (reps + 1) * p ** reps;
        }
        product *= p;
      }
      total += product;
      if (i < L && src[i] === "|") { i++; continue; }
      return total;
    }
  }
  let paths = 0;
  while (i < L) {  // a stray ")" cannot be in a valid pattern; be safe anyway
    paths += disjunction();
    i++;
  }
  return paths > 0 ? paths : 1;
}
define(RP, "exec", named("exec", function (string) {
  tick();
  const s = `${string}`;
  const src = apply(regexSource, this, []);  // a TypeError for anything but a RegExp
  const positions = apply(regexSticky, this, []) ? 1 : s.length + 1;
  const cost = positions * regexPaths(src, s.length) * (src.length + 1);
  if (!(cost <= REGEX_BUDGET)) {
    throw new RangeErr("regular expression too expensive for a " + s.length +
                       "-character string (worst case)");
  }
  return apply(origExec, this, [s]);
}));

function identity(key, value) { tick(); return value; }
define(JS, "stringify", named("stringify", function (value, replacer, space) {
  tick();
  return apply(jsonStringify, JS, [value, replacer === undefined || replacer === null ?
                                   identity : replacer, space]);
}));
define(JS, "parse", named("parse", function (text, reviver) {
  tick();
  return apply(jsonParse, JS, arguments);
}));

// The privileged side --------------------------------------------------------------------------
// The text of a thrown value (its stack too), or null when QuickJS ran out of memory: it throws
// null when it cannot even allocate the error object.
function describe(e) {
  if (e === null) return null;
  try {
    let msg;
    if (e !== null && typeof e === "object") {
      msg = `${e}`;
      const stack = e.stack;
      if (typeof stack === "string") msg += "\n" + stack;
    } else {
      msg = typeof e === "symbol" ? "a symbol" : `${e}`;
    }
    return msg.length > 4000 ? apply(origSlice, msg, [0, 4000]) : msg;
  } catch (inner) {
    return inner === null ? null : "(an error that cannot be printed)";
  }
}

let failure = null;
function fail(message) {
  failure = message;
  throw failure;
}

function encode(root) {
  const parts = create(null);
  const path = create(null);
  let np = 0, count = 0;
  function enc(v, depth) {
    if (++count > MAX_VALUES) fail("more than " + MAX_VALUES + " values");
    switch (typeof v) {
      case "undefined": parts[np++] = "null"; return;
      case "boolean": parts[np++] = v ? "true" : "false"; return;
      case "number":
        parts[np++] = v !== v ? "NaN" : v === Infinity ? "Infinity" :
                      v === -Infinity ? "-Infinity" : jsonStringify(v);
        return;
      case "string":
        if (v.length > MAX_STRING) fail("a string longer than 1 MiB");
        parts[np++] = jsonStringify(v);
        return;
      case "object": {
        if (v === null) { parts[np++] = "null"; return; }
        if (depth >= MAX_DEPTH) fail("nested deeper than " + MAX_DEPTH + " levels");
        for (let d = 0; d < depth; d++) {
          if (path[d] === v) fail("an object that contains itself");
        }
        path[depth] = v;
        if (isArray(v)) {
          const len = toLength(v.length);
          if (len > MAX_VALUES) fail("more than " + MAX_VALUES + " values");
          parts[np++] = "[";
          for (let k = 0; k < len; k++) {
            if (k > 0) parts[np++] = ",";
            enc(v[k], depth + 1);
          }
          parts[np++] = "]";
        } else {
          const keys = objectKeys(v);
          const nk = keys.length;
          if (nk > MAX_VALUES) fail("more than " + MAX_VALUES + " values");
          parts[np++] = "{";
          let first = true;
          for (let k = 0; k < nk; k++) {
            const key = keys[k];
            const x = v[key];
            if (x === undefined) continue;
            if (!first) parts[np++] = ",";
            first = false;
            parts[np++] = jsonStringify(key);
            parts[np++] = ":";
            enc(x, depth + 1);
          }
          parts[np++] = "}";
        }
        path[depth] = undefined;
        return;
      }
      default:
        fail("a " + typeof v + " value");
    }
  }
  enc(root, 0);
  parts.length = np;
  return apply(origJoin, parts, [""]);
}

// kit(null): arm the deadline for the top-level code; kit(true): whether it passed;
// kit(fn): the caller of fn.
// The caller returns a number, a boolean or null as is, else a string: "v" + JSON text,
// "e" + error and stack, "r" + why the result cannot be returned, "t" on a timeout, "m" when out
// of memory.
// Every string handed to Python is flattened: quickjs-ng builds long concatenations as ropes,
// which the binding cannot convert ("Unknown quickjs tag: -6"); slice copies into a flat string.
function flat(s) { return apply(origSlice, s, [0]); }

// No BigInt: one conversion or multiplication of a huge BigInt runs for seconds in C (quadratic),
// and QuickJS checks its CPU cap only between operations, so a loop of them outruns the cap by
// hours. The user's source is checked for BigInt literals before it runs (Python side); code made
// at run time (eval, and the Function, generator and async function constructors) here.
const BIGINT = new RE("(?:^|[^\\w$])(?:0[xXoObB][0-9a-fA-F_]+|[0-9][0-9_]*)n(?![\\w$])");
const SyntaxErr = SyntaxError, Str = String;
function noBigInt(code) {
  if (apply(origExec, BIGINT, [Str(code)]) !== null) {
    throw new SyntaxErr("BigInt is not available in Worcr functions");
  }
}
delete G.BigInt;
delete G.BigInt64Array;
delete G.BigUint64Array;
for (const m of ["getBigInt64", "setBigInt64", "getBigUint64", "setBigUint64"]) {
  delete DataView.prototype[m];
}
const origEval = G.eval;
define(G, "eval", function (code) {
  if (typeof code === "string") noBigInt(code);
  return origEval(code);  // indirect: code made at run time sees the global scope only
});
for (const F of [Function, getPrototypeOf(function* () {}).constructor,
                 getPrototypeOf(async function () {}).constructor,
                 getPrototypeOf(async function* () {}).constructor]) {
  const made = function (...parts) {
    const text = [];  // each part converted once: what is checked is what is compiled
    for (let i = 0; i < parts.length; i++) {
      text[i] = Str(parts[i]);
      noBigInt(text[i]);
    }
    return construct(F, text);
  };
  made.prototype = F.prototype;
  define(F.prototype, "constructor", made);
  if (F === Function) define(G, "Function", made);
}

return function kit(fn) {
  if (fn === null || fn === undefined) {
    expired = false;
    deadline = now() + SLACK;
    return null;
  }
  if (fn === true) return expired;
  return function call(argsText) {
    expired = false;
    failure = null;
    deadline = now() + SLACK;
    const args = jsonParse(argsText);
    let result;
    try {
      result = apply(fn, undefined, args);
    } catch (e) {
      if (expired) return "t";
      const text = describe(e);
      return text === null ? "m" : flat("e" + text);
    }
    if (expired) return "t";
    const t = typeof result;
    if (t === "number" || t === "boolean") return result;
    if (result === undefined || result === null) return null;
    let text;
    try {
      text = encode(result);
    } catch (e) {
      if (expired) return "t";
      if (failure !== null) return flat("r" + failure);
      const text = describe(e);
      return text === null ? "m" : flat("r!" + text);
    }
    return expired ? "t" : flat("v" + text);
  };
};
})()
"""
)

# quickjs-ng writes "at f (<input>:LINE:COLUMN)" and "at <input>:LINE:COLUMN"
_FRAME = re.compile(r"^\s*at (.*?) \(<input>(?::(\d+))?(?::\d+)?\)\s*$")
_SYNTAX_AT = re.compile(r"^\s*at <input>:(\d+)(?::(\d+))?\s*$")
_QUOTED_TOKEN = re.compile(r"unexpected token(?: in expression)?: '(.*)'$")
# QuickJS (quickjs-ng) runs out of memory, or refuses a string past its maximum length (2^30)
_MEMORY = ("InternalError: out of memory", "InternalError: string too long")


class JsFunction:
    """A JS function compiled in its own context. Not thread-safe (one caller at a time)."""

    language = "javascript"

    def __init__(self, source: str, entry: str, caps: Caps) -> None:
        self._source = source
        self._entry = entry
        self._caps = caps
        self._ctx: Any = None
        self._caller: Any = None
        self._thread = 0
        self._broken = False  # a timeout or memory error: rebuild before the next call
        self._closed = False
        self._build()

    def _build(self) -> None:
        self._ctx = self._caller = None
        caps = self._caps
        ctx = quickjs.Context()
        ctx.set_memory_limit(caps.memory)
        ctx.set_time_limit(caps.time)
        ctx.set_max_stack_size(STACK_SIZE)
        prelude = (
            _PRELUDE.replace("@MAX_LENGTH@", str(MAX_LENGTH))
            .replace("@REGEX_BUDGET@", str(REGEX_BUDGET))
            .replace("@SEARCH_BUDGET@", str(SEARCH_BUDGET))
            .replace("@MAX_DEPTH@", str(MAX_DEPTH))
            .replace("@MAX_VALUES@", str(MAX_VALUES))
            .replace("@MAX_STRING@", str(MAX_STRING))
            .replace("@SLACK_US@", str(int(caps.time * 3e6) + 20_000))
        )
        try:
            kit = ctx.eval(prelude)
            kit(None)
        except quickjs.JSException as exc:
            raise CompileError(f"the sandbox could not start: {_first_line(str(exc))}") from None
        try:
            ctx.eval(self._source)
        except quickjs.JSException as exc:
            raise self._compile_error(kit, str(exc)) from None
        except (UnicodeError, TypeError):
            pass  # the completion value was a string Python cannot hold (a rope): irrelevant
        except ValueError:  # the binding passes the source as a C string
            raise CompileError("the source contains a NUL character") from None
        name = self._entry
        try:
            fn = ctx.eval(f"typeof {name} === 'function' ? {name} : null")
            caller = kit(fn) if fn is not None else None
        except quickjs.JSException as exc:
            raise self._compile_error(kit, str(exc)) from None
        if caller is None:
            raise missing_entry(name)
        self._ctx, self._caller = ctx, caller
        self._thread = threading.get_ident()

    def _compile_error(self, kit: Any, text: str) -> CompileError:
        try:
            expired = kit(True) is True  # a wrapped built-in saw the deadline pass
        except quickjs.JSException:
            expired = True
        if expired:
            return CompileError("the top-level code exceeded the CPU time cap")
        return _compile_error(self._source, text)

    def call(self, *args: Any) -> Any:
        if self._closed:
            raise CallError("error", "the function was closed")
        if self._broken or self._caller is None or self._thread != threading.get_ident():
            try:
                self._build()
            except CompileError as exc:
                raise CallError("error", f"rebuilding the context: {exc}") from None
            self._broken = False
        try:
            text = json.dumps(args, ensure_ascii=True, allow_nan=False, separators=(",", ":"))
        except ValueError:  # NaN or an infinity: JSON has none, and neither has JSON.parse
            text = json.dumps(_finite(args), ensure_ascii=True, separators=(",", ":"))
        try:
            out = self._caller(text)
        except quickjs.JSException as exc:
            return self._failed(str(exc))
        kind = type(out)
        if out is None or kind is bool or kind is int:
            return out
        if kind is float:
            # as JSON would have it: integral numbers below 1e21 are written as integers
            return int(out) if out.is_integer() and abs(out) < 1e21 else out
        if kind is not str or not out:
            raise CallError("result", "the sandbox answered something unexpected")
        if out[0] == "v":
            return _decode(out[1:])
        return self._raise(out[0], out[1:])

    def _raise(self, tag: str, body: str) -> Any:
        """The caller's answer for a failed call: "e" error, "r" result, "t" timeout, "m" memory
        (an error QuickJS raised for running out of memory counts as memory too)."""
        if tag == "e" and not body.startswith(_MEMORY):
            raise CallError("error", _runtime_message(body))
        if tag == "r" and not body.startswith("!"):
            raise CallError("result", "cannot return " + body)
        if tag == "r" and not body[1:].startswith(_MEMORY):
            raise CallError("result", "reading the result raised " + _runtime_message(body[1:]))
        self._broken = True
        if tag == "t":
            raise CallError("timeout", f"the CPU time cap ({self._caps.time:g} s) was hit")
        raise CallError("memory", f"the memory cap ({self._caps.memory} bytes) was hit")

    def _failed(self, text: str) -> Any:
        """The caller itself failed: only an uncatchable interrupt, or running out of memory or
        stack in the privileged code, get here."""
        first = _first_line(text)
        if first == "InternalError: interrupted":
            self._broken = True
            raise CallError("timeout", f"the CPU time cap ({self._caps.time:g} s) was hit")
        if "stack overflow" in first:
            raise CallError("error", "InternalError: stack overflow")
        self._broken = True
        raise CallError("memory", f"the memory cap ({self._caps.memory} bytes) was hit")

    def close(self) -> None:
        self._closed = True
        self._ctx = self._caller = None


# A BigInt literal (`2n`, `0xffn`): refused, like the BigInt global (see the prelude). A string or
# comment that looks like one is refused too: write "2" + "n".
_BIGINT_LITERAL = re.compile(r"(?:^|[^\w$])((?:0[xXoObB][0-9a-fA-F_]+|[0-9][0-9_]*)n)(?![\w$])")


def compile_js(source: str, entry: str, caps: Caps) -> JsFunction:
    m = _BIGINT_LITERAL.search(source)
    if m is not None:
        line = source.count("\n", 0, m.start(1)) + 1
        column = m.start(1) - (source.rfind("\n", 0, m.start(1)) + 1) + 1
        raise CompileError(f"BigInt is not available in Worcr functions ({m.group(1)!r})", line,
                           column)  # fmt: skip
    return JsFunction(source, entry, caps)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return value


def _decode(text: str) -> Any:
    value = json.loads(text)
    # JSON.stringify writes a lone surrogate as an escape: only then, or when a string may be
    # over MAX_STRING bytes (4 per character at most), look at the strings themselves.
    if "\\ud" in text or len(text) > MAX_STRING // 4:
        _check_strings(value)
    return value


def _check_strings(value: Any) -> None:
    if isinstance(value, str):
        try:
            size = len(value.encode())
        except UnicodeEncodeError:
            raise CallError("result", "cannot return a string with a lone surrogate") from None
        if size > MAX_STRING:
            raise CallError("result", "cannot return a string longer than 1 MiB")
    elif isinstance(value, list):
        for v in value:
            _check_strings(v)
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_strings(k)
            _check_strings(v)


def _first_line(text: str) -> str:
    return text.split("\n", 1)[0]


def _user_line(stack_lines: list[str]) -> int | None:
    """The line of the innermost frame in the user's code: native frames and the prelude's are
    skipped; a frame without a line (QuickJS omits the function's own first line) stops."""
    for raw in stack_lines:
        m = _FRAME.match(raw)
        if m is None:  # "at repeat (native)"
            continue
        if m.group(2) is None:
            return None
        line = int(m.group(2))
        if line >= _PRELUDE_LINE:
            continue
        return line
    return None


def _runtime_message(text: str) -> str:
    """'TypeError: x is null' + stack -> 'TypeError: x is null (line 3)'."""
    first, _, stack = text.partition("\n")
    line = _user_line(stack.split("\n"))
    message = first if line is None else f"{first} (line {line})"
    return message[:_ERROR_CHARS]


def _compile_error(source: str, text: str) -> CompileError:
    first, _, stack = text.partition("\n")
    if first == "InternalError: interrupted":
        return CompileError("the top-level code exceeded the CPU time cap")
    if first.startswith(_MEMORY) or first == "null":
        return CompileError("the top-level code exceeded the memory cap")
    stack_lines = stack.split("\n")
    if first.startswith("SyntaxError: ") and stack_lines and _SYNTAX_AT.match(stack_lines[0]):
        m = _SYNTAX_AT.match(stack_lines[0])
        assert m is not None
        line: int | None = int(m.group(1))
        message = first[len("SyntaxError: ") :]
        column = None if m.group(2) is None else int(m.group(2))
        token = _QUOTED_TOKEN.search(message)
        if message == "unexpected end of input" or (token and token.group(1) == ""):
            line, column = end_of_source(source)
        elif token and column is None:
            column = token_column(source, line or 0, token.group(1))
        return CompileError(message, line, column)
    return CompileError(first[:_ERROR_CHARS], _user_line(stack_lines))
