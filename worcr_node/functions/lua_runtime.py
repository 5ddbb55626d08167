"""Compiles and calls user functions written in Lua 5.4 (lupa), in a sandbox.

The function process (`child.py`; in tests, the in-process host) calls these one at a time, through
`sandbox.compile_function`. Each compiled function owns one Lua state (`LuaRuntime`, capped at
`Caps.memory` bytes by lupa's allocator), built by `_PRELUDE` below:

* The user's code is loaded in text mode only (precompiled bytecode is refused) into its own
  environment table holding: assert, error, ipairs, next, pairs, pcall, xpcall, select, tonumber,
  tostring, type, unpack, rawequal, rawlen, rawget, rawset, setmetatable, getmetatable, math,
  string (no dump), table, utf8, os.time/clock/date/difftime, and _G (the environment itself).
  Not there: io, the rest of os, require, package, debug, load*, dofile, collectgarbage,
  coroutine, print, python. The shared string metatable's __index is the sandbox's string table;
  getmetatable("") answers a decoy (the real one cannot be changed, so no __tostring or other
  metamethod can be planted on strings), and privileged code never calls tostring on a user value.
  Nothing Python ever enters the state: arguments cross as one flat table of strings, numbers
  and booleans (`_flatten`) that the prelude turns into fresh Lua tables on each call, so Lua code
  cannot reach a Python object (and `attribute_filter` refuses every attribute anyway).
* Results come back as numbers, booleans, nil or a string as they are, tables as JSON text
  written by the prelude with raw access only (no metamethod runs): a list when the keys are
  exactly 1..n, a map when they are all strings, {} when empty; anything else (mixed keys,
  functions, cycles, > 32 levels, > 10,000 values, a string over 1 MiB or not UTF-8) is a
  "result" error. Runtime errors read like `function:3: attempt to index a nil value`.
* CPU cap: a count hook (every `HOOK_COUNT` VM instructions, installed before the user's code
  runs) raises an error once the process CPU time (`os.clock`, i.e. C `clock()`: all threads of
  the process count) passes the call's deadline, and keeps raising until the call has unwound;
  pcall/xpcall re-raise it, so `while true do pcall(f) end` ends too. An xpcall message handler
  runs once the stack has unwound (never at the raise point, which for the timeout is inside the
  hook, where hooks are off) and not at all on a timeout. The deadline is armed once the arguments
  are built, and the memory cap is lifted while they cross (lupa's conversion is unprotected: a
  memory error there would abort the process); a state left over its cap fails the call.
* __gc metamethods are refused (a finalizer would run outside any call), so no user code runs
  between calls.
* A timeout or memory error poisons the state: the next call rebuilds it from the source.

What the hook cannot interrupt is C code: one library call runs to its end. The library calls with
unbounded or superlinear cost are replaced: string.find/match/gmatch/gsub refuse a (pattern,
subject) pair whose worst case (backtracking) exceeds `PATTERN_BUDGET` steps; string.rep with an
empty string and separator returns at once (the C loop would spin n times); table.insert, remove,
move and concat are written in Lua (the C versions loop up to a __len answer); table.sort always
gets a Lua comparator (a C one such as math.type would never meet the hook) and refuses tables with
__len, __index or __newindex metamethods. What remains are linear C operations on values the
memory cap allows (comparing, concatenating, upper-casing strings of a few MiB): each takes up to
a few milliseconds, and between two hook runs (HOOK_COUNT instructions) a loop can do a few
hundred of them: measured, a hostile function overruns its CPU cap by up to about 0.5 s with the
default 32 MiB cap (a loop upper-casing a 4 MiB string), by a few tens of ms with 8 MiB.

The count hook slows Lua code down (Lua traces every instruction while a count hook is set; about
2x in a tight loop); a trivial call costs about 10 us, mostly turning the arguments into tables.
"""

from __future__ import annotations

import json
from typing import Any

import lupa.lua54 as lupa

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

__all__ = ["HOOK_COUNT", "PATTERN_BUDGET", "LuaFunction", "compile_lua"]

HOOK_COUNT = 1000  # VM instructions between two CPU-time checks
PATTERN_BUDGET = 20_000_000  # worst-case matcher steps allowed for one pattern call
_ERROR_CHARS = 2000  # an error message is cut there
_INT_MIN, _INT_MAX = -(2**63), 2**63 - 1

# The privileged side. Runs first in a fresh state; everything it keeps is local (upvalues), so
# the user's code, which only ever sees `env`, cannot reach it. Returns compile(source, entry) and
# invoke(...), both of which the Python side calls.
_PRELUDE = r"""
local BUDGET, HOOK_COUNT, MAX_DEPTH, MAX_VALUES, MAX_STRING, PATTERN_BUDGET = ...
local type, next, select, error, pcall, xpcall, tostring, tonumber =
      type, next, select, error, pcall, xpcall, tostring, tonumber
local rawget, rawset, rawequal, rawlen, setmetatable, getmetatable =
      rawget, rawset, rawequal, rawlen, setmetatable, getmetatable
local load, math_type, math_tointeger = load, math.type, math.tointeger
local huge, maxinteger = math.huge, math.maxinteger
local clock, sethook, d_getmetatable = os.clock, debug.sethook, debug.getmetatable
local s_byte, s_find, s_format, s_gsub, s_match, s_gmatch, s_rep, s_sub =
      string.byte, string.find, string.format, string.gsub, string.match, string.gmatch,
      string.rep, string.sub
local t_concat, t_sort, t_unpack = table.concat, table.sort, table.unpack
local utf8_len = utf8.len

-- the CPU cap ------------------------------------------------------------------------------------
local TIMEOUT = setmetatable({}, {__tostring = function() return "time limit exceeded" end})
local deadline, fired = huge, false

sethook(function()
  if clock() > deadline then
    fired = true
    error(TIMEOUT, 0)
  end
end, "", HOOK_COUNT)

local function rethrow(ok, ...)
  if fired then error(TIMEOUT, 0) end  -- a timeout caught by the user's pcall goes on unwinding
  return ok, ...
end
local function safe_pcall(f, ...) return rethrow(pcall(f, ...)) end

-- The message handler runs after the stack has unwound, never at the raise point: an error raised
-- from inside the count hook (the timeout, a C stack overflow while calling the hook) would run it
-- with hooks disabled, i.e. with no CPU cap. (No debug library here: nothing the handler could
-- inspect at the raise point is lost.)
local function handled(handler, ok, ...)
  if fired then error(TIMEOUT, 0) end
  if ok then return true, ... end
  local ok2, e = pcall(handler, (...))
  if fired then error(TIMEOUT, 0) end
  return false, e
end
local function safe_xpcall(f, handler, ...)
  if type(handler) ~= "function" then
    error(s_format("bad argument #2 to 'xpcall' (function expected, got %s)", type(handler)), 2)
  end
  return handled(handler, pcall(f, ...))
end

local function safe_setmetatable(t, mt)
  if type(mt) == "table" and rawget(mt, "__gc") ~= nil then
    error("__gc metamethods are not allowed in functions", 2)
  end
  return setmetatable(t, mt)
end

-- string: patterns with a bounded worst case --------------------------------------------------
local function skip_set(p, i, n)  -- p:sub(i, i) == "[": the index after the closing "]"
  i = i + 1
  if s_byte(p, i) == 94 then i = i + 1 end  -- ^
  if s_byte(p, i) == 93 then i = i + 1 end  -- a first "]" is a literal
  while i <= n do
    local c = s_byte(p, i)
    if c == 37 then i = i + 2       -- %x
    elseif c == 93 then return i + 1
    else i = i + 1 end
  end
  return i
end

-- Upper bound on the matcher's steps: (start positions) x (backtracking paths) x (pattern size).
-- Each *, +, - and %b, %1..%9 multiplies the paths by (subject length + 1), each ? by 2.
local function pattern_cost(subject_len, p, plain, anchored_allowed)
  local n, plen = subject_len, #p
  local positions = n + 1
  if plain then return positions * (plen + 1) end
  local paths, i = 1, 1
  if anchored_allowed and s_byte(p, 1) == 94 then positions, i = 1, 2 end
  while i <= plen do
    local c = s_byte(p, i)
    local quantifiable = true
    if c == 37 then  -- %
      local d = s_byte(p, i + 1)
      if d == 98 then paths, i, quantifiable = paths * (n + 1), i + 4, false      -- %bxy
      elseif d == 102 then i, quantifiable = skip_set(p, i + 2, plen), false      -- %f[set]
      elseif d and d >= 48 and d <= 57 then
        paths, i, quantifiable = paths * (n + 1), i + 2, false                    -- %1
      else i = i + 2 end
    elseif c == 91 then i = skip_set(p, i, plen)                                  -- [set]
    elseif c == 40 or c == 41 then i, quantifiable = i + 1, false                 -- ( )
    else i = i + 1 end
    if quantifiable then
      local q = s_byte(p, i)
      if q == 42 or q == 43 or q == 45 then paths, i = paths * (n + 1), i + 1
      elseif q == 63 then paths, i = paths * 2, i + 1 end
    end
  end
  return positions * paths * (plen + 1)
end

-- The text of a string or number argument without consulting any metamethod (tostring would read
-- the string metatable's __tostring; numbers have no metatable the sandbox can set).
local function raw_text(v)
  if type(v) == "string" then return v end
  if math_type(v) == "integer" then return s_format("%d", v) end
  return s_format("%.14g", v) .. ".0"  -- maybe 2 bytes too long: only an upper bound is needed
end

local function check_pattern(name, s, p, plain, anchored_allowed)
  local ts, tp = type(s), type(p)
  if (ts == "string" or ts == "number") and (tp == "string" or tp == "number") then
    local n = #raw_text(s)
    local cost = pattern_cost(n, raw_text(p), plain, anchored_allowed)
    if not (cost <= PATTERN_BUDGET) then
      error(s_format("string.%s: pattern too expensive for a %d-byte string (worst case)",
                     name, n), 3)
    end
  end  -- anything else: the library function raises its usual error
end

local sandbox_string = {}
for k, v in next, string do sandbox_string[k] = v end
sandbox_string.dump = nil
sandbox_string.find = function(s, p, init, plain)
  check_pattern("find", s, p, plain, true)
  return s_find(s, p, init, plain)
end
sandbox_string.match = function(s, p, init)
  check_pattern("match", s, p, false, true)
  return s_match(s, p, init)
end
sandbox_string.gmatch = function(s, p, init)
  check_pattern("gmatch", s, p, false, false)
  return s_gmatch(s, p, init)
end
sandbox_string.gsub = function(s, p, repl, n)
  check_pattern("gsub", s, p, false, true)
  return s_gsub(s, p, repl, n)
end
sandbox_string.rep = function(s, n, sep)
  local ts, tsep = type(s), type(sep)
  if (ts == "string" or ts == "number") and (sep == nil or tsep == "string" or tsep == "number")
     and #raw_text(s) + #raw_text(sep or "") == 0 and tonumber(n) ~= nil then
    return ""  -- the C loop would spin n times producing nothing
  end
  return s_rep(s, n, sep)
end
-- ("x"):dump() finds nothing either. The metatable itself stays out of reach: getmetatable("")
-- answers a decoy, so no __tostring, __index... can be planted where privileged code looks.
do
  local string_mt = getmetatable("")
  for k in next, string_mt do string_mt[k] = nil end
  string_mt.__index = sandbox_string
  string_mt.__metatable = {__index = sandbox_string}
end

-- table: the loops that follow #t (and __len) are written in Lua, so the hook sees them --------
local function check_table(t, n, name)
  if type(t) ~= "table" then
    error(s_format("bad argument #%d to '%s' (table expected, got %s)", n, name, type(t)), 3)
  end
end
local function check_integer(v, n, name)
  local iv = math_tointeger(type(v) == "string" and tonumber(v) or v)
  if iv == nil then
    error(s_format("bad argument #%d to '%s' (number has no integer representation)", n, name),
          3)
  end
  return iv
end

local function t_insert(t, ...)
  check_table(t, 1, "insert")
  local nargs = select("#", ...)
  local e = #t + 1
  if nargs == 1 then
    t[e] = (...)
    return
  elseif nargs ~= 2 then
    error("wrong number of arguments to 'insert'", 2)
  end
  local pos, v = ...
  pos = check_integer(pos, 2, "insert")
  if pos < 1 or pos > e then error("bad argument #2 to 'insert' (position out of bounds)", 2) end
  for i = e, pos + 1, -1 do t[i] = t[i - 1] end
  t[pos] = v
end

local function t_remove(t, pos)
  check_table(t, 1, "remove")
  local size = #t
  if pos == nil then pos = size else pos = check_integer(pos, 2, "remove") end
  if pos ~= size and (pos < 1 or pos > size + 1) then
    error("bad argument #2 to 'remove' (position out of bounds)", 2)
  end
  local v = t[pos]
  while pos < size do
    t[pos] = t[pos + 1]
    pos = pos + 1
  end
  t[pos] = nil
  return v
end

local function t_move(a1, f, e, t, a2)
  f = check_integer(f, 2, "move")
  e = check_integer(e, 3, "move")
  t = check_integer(t, 4, "move")
  if a2 == nil then a2 = a1 end
  check_table(a1, 1, "move")
  check_table(a2, 5, "move")
  if e >= f then
    if not (f > 0 or e < maxinteger + f) then
      error("bad argument #3 to 'move' (too many elements to move)", 2)
    end
    local n = e - f + 1
    if t > maxinteger - n + 1 then
      error("bad argument #4 to 'move' (destination wrap around)", 2)
    end
    if t > e or t <= f or a1 ~= a2 then
      for i = 0, n - 1 do a2[t + i] = a1[f + i] end
    else
      for i = n - 1, 0, -1 do a2[t + i] = a1[f + i] end
    end
  end
  return a2
end

local function t_concat_safe(t, sep, i, j)
  check_table(t, 1, "concat")
  if sep == nil then sep = "" end
  i = i == nil and 1 or check_integer(i, 3, "concat")
  j = j == nil and #t or check_integer(j, 4, "concat")
  local parts, n = {}, 0
  for k = i, j do
    local v = t[k]
    local tv = type(v)
    if tv == "string" then parts[n + 1] = v
    elseif tv == "number" then parts[n + 1] = tostring(v)
    else
      error(s_format("invalid value (at index %d) in table for 'concat'", k), 2)
    end
    n = n + 1
  end
  return t_concat(parts, sep)
end

-- The C sort runs without __len (a fake length would make it loop in C) and with an __index
-- that is a function (Lua: the hook sees it) or a table without a metatable of its own (a long
-- __index chain looked up for every hole would loop in C); always with a Lua comparator, so
-- every comparison meets the hook. Class-style arrays (`List.__index = List`) sort.
local function less(a, b) return a < b end
local function t_sort_safe(t, comp)
  check_table(t, 1, "sort")
  local mt = d_getmetatable(t)
  local index = mt ~= nil and rawget(mt, "__index") or nil
  if mt ~= nil and (rawget(mt, "__len") ~= nil
                    or (type(index) == "table" and index ~= mt and d_getmetatable(index) ~= nil)
                    or (index ~= nil and type(index) ~= "table" and type(index) ~= "function")) then
    error("bad argument #1 to 'sort' (tables with __len or a chain of __index tables "
          .. "are not supported in functions)", 2)
  end
  if comp == nil then return t_sort(t, less) end
  if type(comp) ~= "function" then
    error(s_format("bad argument #2 to 'sort' (function expected, got %s)", type(comp)), 2)
  end
  return t_sort(t, function(a, b) return comp(a, b) end)
end

local sandbox_table = {}
for k, v in next, table do sandbox_table[k] = v end
sandbox_table.insert, sandbox_table.remove, sandbox_table.move = t_insert, t_remove, t_move
sandbox_table.concat, sandbox_table.sort = t_concat_safe, t_sort_safe

local function copy(t)
  local c = {}
  for k, v in next, t do c[k] = v end
  return c
end

local env = {
  assert = assert, error = error, ipairs = ipairs, next = next, pairs = pairs,
  pcall = safe_pcall, xpcall = safe_xpcall, select = select, tonumber = tonumber,
  tostring = tostring, type = type, unpack = t_unpack, rawequal = rawequal, rawlen = rawlen,
  rawget = rawget, rawset = rawset, setmetatable = safe_setmetatable,
  getmetatable = getmetatable, math = copy(math), string = sandbox_string,
  table = sandbox_table, utf8 = copy(utf8),
  os = {time = os.time, clock = os.clock, date = os.date, difftime = os.difftime},
}
env._G = env

-- nothing of the host is needed past this point
for _, name in next, {"io", "os", "debug", "package", "require", "load", "loadfile", "dofile",
                      "collectgarbage", "coroutine", "python", "print", "warn"} do
  _G[name] = nil
end

-- results ------------------------------------------------------------------------------------
local ESCAPES = {['"'] = '\\"', ["\\"] = "\\\\"}
for b = 0, 31 do ESCAPES[string.char(b)] = s_format("\\u%04x", b) end
ESCAPES["\127"] = "\\u007f"

local function check_string(s)
  if #s > MAX_STRING then error("a string longer than 1 MiB", 0) end
  if not utf8_len(s) then error("a string that is not valid UTF-8", 0) end
end

local function quote(s)
  check_string(s)
  return '"' .. s_gsub(s, '[%c"\\]', ESCAPES) .. '"'
end

local function number_text(v)
  if math_type(v) == "integer" then return s_format("%d", v) end
  if v ~= v then return "NaN" end
  if v == huge then return "Infinity" end
  if v == -huge then return "-Infinity" end
  local s = s_format("%.17g", v)
  if not s_find(s, "[.eE]") then s = s .. ".0" end  -- stays a float in Python
  return s
end

-- JSON text for a table; errors (strings) say why it cannot be brought back
local function encode(root)
  local out, n, count, path = {}, 0, 0, {}
  local function put(s) n = n + 1; out[n] = s end
  local function enc(v, depth)
    count = count + 1
    if count > MAX_VALUES then error(s_format("more than %d values", MAX_VALUES), 0) end
    local tv = type(v)
    if tv == "string" then put(quote(v))
    elseif tv == "number" then put(number_text(v))
    elseif tv == "boolean" then put(v and "true" or "false")
    elseif tv == "table" then
      if depth > MAX_DEPTH then error(s_format("nested deeper than %d levels", MAX_DEPTH), 0) end
      if path[v] then error("a table that contains itself", 0) end
      path[v] = true
      local size, maxkey, strings, integers = 0, 0, false, false
      for k in next, v do
        size = size + 1
        if size > MAX_VALUES then error(s_format("more than %d values", MAX_VALUES), 0) end
        local tk = type(k)
        if tk == "string" then strings = true
        elseif math_type(k) == "integer" and k >= 1 then
          integers = true
          if k > maxkey then maxkey = k end
        else
          error("a table key that is neither a string nor a positive integer (" .. tk .. ")", 0)
        end
      end
      if size == 0 then put("{}")
      elseif strings and integers then
        error("a table with both string and integer keys", 0)
      elseif integers then
        if maxkey ~= size then error("a table whose integer keys are not 1..n", 0) end
        put("[")
        for i = 1, size do
          if i > 1 then put(",") end
          enc(rawget(v, i), depth + 1)
        end
        put("]")
      else
        put("{")
        local first = true
        for k, x in next, v do
          if not first then put(",") end
          first = false
          put(quote(k))
          put(":")
          enc(x, depth + 1)
        end
        put("}")
      end
      path[v] = nil
    elseif tv == "nil" then put("null")
    else error("a " .. tv .. " value", 0) end
  end
  enc(root, 1)
  return t_concat(out)
end

local function message(e)
  local te = type(e)
  if te == "string" then return #e > 2000 and s_sub(e, 1, 2000) or e end
  if te == "number" or te == "boolean" or te == "nil" then return tostring(e) end
  return "(error object is a " .. te .. " value)"
end

local entry_fn = nil

-- Every return is (tag, text), but for numbers, booleans and nil: the value itself.
local function compile(source, entry)
  local chunk, err = load(source, "=function", "t", env)
  if not chunk then return "syntax", err end
  fired = false
  deadline = clock() + BUDGET
  local ok, e = pcall(chunk)
  deadline = huge
  if fired then fired = false; return "timeout", "" end
  if not ok then
    if e == "not enough memory" then return "memory", e end
    return "error", message(e)
  end
  local fn = rawget(env, entry)
  if type(fn) ~= "function" then return "missing", "" end
  entry_fn = fn
  return "ok", ""
end

local function finish(ok, r)
  if not ok then
    deadline = huge
    if fired then fired = false; return "t", "" end
    if r == "not enough memory" then return "m", r end
    return "e", message(r)
  end
  local tr = type(r)
  if tr == "number" or tr == "boolean" or tr == "nil" then
    deadline = huge
    return r
  end
  local ok2, tag, text = pcall(function()
    if tr == "string" then check_string(r); return "s", r end
    if tr == "table" then return "j", encode(r) end
    error("a " .. tr .. " value", 0)
  end)
  deadline = huge
  if fired then fired = false; return "t", "" end
  if not ok2 then
    if tag == "not enough memory" then return "m", tag end
    return "r", message(tag)
  end
  return tag, text
end

-- The arguments come flat, as one table of plain values (see _flatten): per value a tag and a
-- payload: 0 nil, 1 a string / number / boolean, 2 a list of n values, 3 a map of n (key, value).
local tokens, at = nil, 0
local function read()
  local tag, v = tokens[at + 1], tokens[at + 2]
  at = at + 2
  if tag == 1 then return v end
  if tag == 0 then return nil end
  local t = {}
  if tag == 2 then
    for k = 1, v do t[k] = read() end
  else
    for _ = 1, v do
      at = at + 1
      local key = tokens[at]
      t[key] = read()
    end
  end
  return t
end

-- prepare(nargs, flat) builds the arguments (Python runs it without the memory cap, and no
-- deadline is armed: their size is not the function's doing), invoke() then calls the function.
local args, nargs_ready = nil, 0
local function prepare(nargs, flat)
  tokens, at = flat, 0
  local a = {}
  for k = 1, nargs do a[k] = read() end
  tokens = nil
  args, nargs_ready = a, nargs
end

local function invoke()
  local a, n = args, nargs_ready
  args, nargs_ready = nil, 0
  fired = false
  deadline = clock() + BUDGET
  if n == 2 then return finish(pcall(entry_fn, a[1], a[2])) end
  return finish(pcall(entry_fn, t_unpack(a, 1, n)))
end

return compile, prepare, invoke
"""


def _deny(obj: Any, name: Any, is_setting: bool) -> Any:
    raise AttributeError("Python attributes are not available to functions")


class LuaFunction:
    """A Lua function compiled in its own state. Not thread-safe (one caller at a time)."""

    language = "lua"

    def __init__(self, source: str, entry: str, caps: Caps) -> None:
        self._source = source
        self._entry = entry
        self._caps = caps
        self._lua: Any = None
        self._prepare: Any = None
        self._invoke: Any = None
        self._broken = False  # a timeout or memory error: rebuild before the next call
        self._closed = False
        self._build()

    def _build(self) -> None:
        self._lua = self._prepare = self._invoke = None
        try:
            lua = lupa.LuaRuntime(
                register_eval=False,
                register_builtins=False,
                unpack_returned_tuples=False,
                max_memory=self._caps.memory,
                attribute_filter=_deny,
                encoding=None,
            )
            compile_, prepare, invoke = lua.execute(
                _PRELUDE,
                float(self._caps.time),
                HOOK_COUNT,
                MAX_DEPTH,
                MAX_VALUES,
                MAX_STRING,
                PATTERN_BUDGET,
            )
            tag, text = compile_(self._source.encode(), self._entry.encode())
        except lupa.LuaMemoryError:
            raise CompileError("the memory cap was hit while compiling") from None
        except lupa.LuaError:  # the hook fired in the prelude's own code: a tiny time cap
            raise CompileError("the top-level code exceeded the CPU time cap") from None
        tag = tag.decode()
        if tag == "syntax":
            raise _syntax_error(self._source, _text(text))
        if tag == "timeout":
            raise CompileError("the top-level code exceeded the CPU time cap")
        if tag == "memory":
            raise CompileError("the top-level code exceeded the memory cap")
        if tag == "error":
            line, msg = _split_location(_text(text))
            raise CompileError(msg, line)
        if tag == "missing":
            raise missing_entry(self._entry)
        self._lua, self._prepare, self._invoke = lua, prepare, invoke

    def call(self, *args: Any) -> Any:
        if self._closed:
            raise CallError("error", "the function was closed")
        if self._broken or self._invoke is None:
            try:
                self._build()
            except CompileError as exc:
                raise CallError("error", f"rebuilding the state: {exc}") from None
            self._broken = False
        lua = self._lua
        tokens: list[Any] = []
        for a in args:
            _flatten(a, tokens, 0)
        # Lifted while the arguments cross: lupa's table_from runs unprotected (running out of
        # memory there aborts the process), and the arguments' size is the caller's (bounded by
        # the job size limit). A state left over its cap fails the call with a memory error.
        try:
            lua.set_max_memory(0)
            try:
                self._prepare(len(args), lua.table_from(tokens))
            finally:
                lua.set_max_memory(self._caps.memory)
            out = self._invoke()
        except lupa.LuaMemoryError:
            self._broken = True
            raise CallError("memory", "the memory cap was hit") from None
        except lupa.LuaError:  # the hook fired in the privileged code right after the call
            self._broken = True
            raise CallError("timeout", "the CPU time cap was hit") from None
        if type(out) is not tuple:
            return out  # a number, a boolean or nil: lupa converted it
        tag, text = out
        if tag == b"s":
            return text.decode()
        if tag == b"j":
            return json.loads(text)
        if tag == b"e":
            raise CallError("error", _text(text))
        if tag == b"r":
            raise CallError("result", "cannot return " + _text(text))
        self._broken = True
        if tag == b"t":
            raise CallError("timeout", f"the CPU time cap ({self._caps.time:g} s) was hit")
        raise CallError("memory", f"the memory cap ({self._caps.memory} bytes) was hit")

    def close(self) -> None:
        self._closed = True
        self._lua = self._prepare = self._invoke = None


def compile_lua(source: str, entry: str, caps: Caps) -> LuaFunction:
    return LuaFunction(source, entry, caps)


def _flatten(value: Any, out: list[Any], depth: int) -> None:
    """Append a JSON-like Python value to `out` as (tag, payload) tokens for the prelude's invoke:
    only strings (as bytes), numbers, booleans and None ever reach Lua, never a Python object."""
    kind = type(value)
    if kind is str:
        out += (1, value.encode())
    elif kind is list:
        if depth >= MAX_DEPTH:
            raise ValueError(f"an argument is nested deeper than {MAX_DEPTH} levels")
        out += (2, len(value))
        for v in value:
            _flatten(v, out, depth + 1)
    elif kind is dict:
        if depth >= MAX_DEPTH:
            raise ValueError(f"an argument is nested deeper than {MAX_DEPTH} levels")
        out += (3, len(value))
        for k, v in value.items():
            if type(k) is not str:
                raise TypeError(f"argument keys must be strings, not {type(k).__name__}")
            out.append(k.encode())
            _flatten(v, out, depth + 1)
    elif value is None:
        out += (0, 0)
    elif kind is bool or kind is float:
        out += (1, value)
    elif kind is int:
        out += (1, value if _INT_MIN <= value <= _INT_MAX else float(value))
    else:
        _flatten(_plain(value), out, depth)


def _plain(value: Any) -> Any:
    """Subclasses (IntEnum, OrderedDict, tuple...) as the plain types; TypeError for the rest."""
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, dict):
        return dict(value)
    if isinstance(value, list | tuple):
        return list(value)
    raise TypeError(f"cannot pass a {type(value).__name__} to a function")


def _text(raw: Any) -> str:
    text = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
    return text[:_ERROR_CHARS]


def _split_location(message: str) -> tuple[int | None, str]:
    """("function:3: boom") -> (3, "boom"); messages without the chunk prefix unchanged."""
    prefix = "function:"
    if message.startswith(prefix):
        number, sep, rest = message[len(prefix) :].partition(": ")
        if sep and number.isdigit():
            return int(number), rest
    return None, message


def _syntax_error(source: str, message: str) -> CompileError:
    line, msg = _split_location(message)
    if line is None:  # e.g. "attempt to load a binary chunk (mode is 't')"
        return CompileError(msg)
    column = None
    near = msg.rfind(" near ")
    if near >= 0:
        token = msg[near + len(" near ") :]
        if token == "<eof>":
            line, column = end_of_source(source)
        elif len(token) >= 2 and token[0] == "'" and token[-1] == "'":
            column = token_column(source, line, token[1:-1])
    return CompileError(msg, line, column)
