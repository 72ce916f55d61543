"""WASI preview 1 test modules, written in WAT and compiled with wasmtime's own wat2wasm.

Each function returns module bytes. The modules use raw WASI calls, so what they do is exactly
what the test reads here: no libc, no hidden preopen lookups (fd 3 is the first preopen).
"""

from __future__ import annotations

import wasmtime

# WASI constants (wasi_snapshot_preview1)
RIGHT_FD_READ = 1 << 1
RIGHT_FD_WRITE = 1 << 6
OFLAG_CREAT = 1
OFLAG_TRUNC = 8
ERRNO_NOENT = 44
ERRNO_NOTCAPABLE = 76
ERRNO_PERM = 63

_STR_BASE = 16384  # data segments live here; scratch memory is below


def _escape(data: bytes) -> str:
    return "".join(f"\\{b:02x}" for b in data)


def _module(
    body: str, strings: dict[str, bytes], *, pages: int = 1, max_pages: int | None = None
) -> bytes:
    """Wrap `body` with the WASI imports, a $print helper and the named strings.

    Each string NAME becomes two globals, $NAME (offset) and $NAME_len.
    """
    off = _STR_BASE
    data, globs = [], []
    for name, value in strings.items():
        data.append(f'(data (i32.const {off}) "{_escape(value)}")')
        globs.append(f"(global ${name} i32 (i32.const {off}))")
        globs.append(f"(global ${name}_len i32 (i32.const {len(value)}))")
        off += len(value) + 1
    limits = f"{pages} {max_pages}" if max_pages is not None else f"{pages}"
    wat = f"""
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (import "wasi_snapshot_preview1" "args_sizes_get"
    (func $args_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_get" (func $args_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_sizes_get"
    (func $environ_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_get" (func $environ_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_open"
    (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (memory (export "memory") {limits})
  {" ".join(globs)}
  {" ".join(data)}
  ;; write len bytes at ptr to fd, via an iovec at 0
  (func $write (param $fd i32) (param $ptr i32) (param $len i32) (result i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (call $fd_write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8)))
  (func $print (param $ptr i32) (param $len i32)
    (drop (call $write (i32.const 1) (local.get $ptr) (local.get $len))))
  (func $strlen (param $p i32) (result i32) (local $n i32)
    (block $done (loop $next
      (br_if $done (i32.eqz (i32.load8_u (i32.add (local.get $p) (local.get $n)))))
      (local.set $n (i32.add (local.get $n) (i32.const 1)))
      (br $next)))
    (local.get $n))
  ;; print each NUL-terminated string whose pointer is in the array at $ptrs, one per line
  (func $print_list (param $ptrs i32) (param $count i32) (local $i i32) (local $s i32)
    (block $done (loop $next
      (br_if $done (i32.ge_u (local.get $i) (local.get $count)))
      (local.set $s (i32.load (i32.add (local.get $ptrs) (i32.shl (local.get $i) (i32.const 2)))))
      (call $print (local.get $s) (call $strlen (local.get $s)))
      (call $print (global.get $nl) (i32.const 1))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $next))))
  {body}
)"""
    return bytes(wasmtime.wat2wasm(wat))


def _strings(**extra: bytes) -> dict[str, bytes]:
    return {"nl": b"\n", **extra}


def hello() -> bytes:
    """Prints `hello`, then each argv entry and each env entry on a line of its own."""
    body = """
  (func (export "_start")
    (call $print (global.get $hello) (global.get $hello_len))
    (drop (call $args_sizes_get (i32.const 100) (i32.const 104)))
    (drop (call $args_get (i32.const 1024) (i32.const 4096)))
    (call $print_list (i32.const 1024) (i32.load (i32.const 100)))
    (drop (call $environ_sizes_get (i32.const 100) (i32.const 104)))
    (drop (call $environ_get (i32.const 2048) (i32.const 8192)))
    (call $print_list (i32.const 2048) (i32.load (i32.const 100))))"""
    return _module(body, _strings(hello=b"hello\n"))


def exit_with(code: int) -> bytes:
    body = f"""
  (func (export "_start") (call $proc_exit (i32.const {code})))"""
    return _module(body, _strings())


def trap() -> bytes:
    body = """
  (func (export "_start") (call $print (global.get $msg) (global.get $msg_len)) unreachable)"""
    return _module(body, _strings(msg=b"about to trap\n"))


def spin() -> bytes:
    """Loops forever without calling the host."""
    body = """
  (func (export "_start") (loop $forever (br $forever)))"""
    return _module(body, _strings())


def grow(pages: int) -> bytes:
    """Grows memory by `pages`; prints `grew` (exit 0) or `grow failed` (exit 1)."""
    body = f"""
  (func (export "_start")
    (if (i32.eq (memory.grow (i32.const {pages})) (i32.const -1))
      (then (call $print (global.get $fail) (global.get $fail_len))
            (call $proc_exit (i32.const 1))))
    (call $print (global.get $ok) (global.get $ok_len)))"""
    return _module(body, _strings(ok=b"grew\n", fail=b"grow failed\n"))


def big_memory(pages: int) -> bytes:
    """Asks for `pages` of memory up front: instantiation itself needs them."""
    body = """
  (func (export "_start"))"""
    return _module(body, _strings(), pages=pages)


def cat(dirfd: int, path: str) -> bytes:
    """Opens `path` relative to preopen `dirfd` and copies it to stdout.

    Exits with the WASI errno of path_open when that fails, so tests see what the module saw.
    """
    body = f"""
  (func (export "_start") (local $err i32)
    (local.set $err (call $path_open (i32.const {dirfd}) (i32.const 0)
      (global.get $path) (global.get $path_len) (i32.const 0)
      (i64.const {RIGHT_FD_READ}) (i64.const 0) (i32.const 0) (i32.const 200)))
    (if (local.get $err) (then (call $proc_exit (local.get $err))))
    (i32.store (i32.const 16) (i32.const 32768))
    (i32.store (i32.const 20) (i32.const 16384))
    (local.set $err
      (call $fd_read (i32.load (i32.const 200)) (i32.const 16) (i32.const 1) (i32.const 24)))
    (if (local.get $err) (then (call $proc_exit (i32.add (i32.const 100) (local.get $err)))))
    (call $print (i32.const 32768) (i32.load (i32.const 24))))"""
    return _module(body, _strings(path=path.encode()))


def write_file(dirfd: int, path: str, text: bytes) -> bytes:
    """Creates/truncates `path` under preopen `dirfd` and writes `text`; errno as exit code."""
    body = f"""
  (func (export "_start") (local $err i32)
    (local.set $err (call $path_open (i32.const {dirfd}) (i32.const 0)
      (global.get $path) (global.get $path_len) (i32.const {OFLAG_CREAT | OFLAG_TRUNC})
      (i64.const {RIGHT_FD_WRITE}) (i64.const 0) (i32.const 0) (i32.const 200)))
    (if (local.get $err) (then (call $proc_exit (local.get $err))))
    (local.set $err
      (call $write (i32.load (i32.const 200)) (global.get $text) (global.get $text_len)))
    (if (local.get $err) (then (call $proc_exit (i32.add (i32.const 100) (local.get $err))))))"""
    return _module(body, _strings(path=path.encode(), text=text))


def echo_stdin() -> bytes:
    """Copies stdin to stdout until EOF."""
    body = """
  (func (export "_start") (local $err i32)
    (block $eof (loop $more
      (i32.store (i32.const 16) (i32.const 32768))
      (i32.store (i32.const 20) (i32.const 16384))
      (local.set $err (call $fd_read (i32.const 0) (i32.const 16) (i32.const 1) (i32.const 24)))
      (if (local.get $err) (then (call $proc_exit (i32.add (i32.const 100) (local.get $err)))))
      (br_if $eof (i32.eqz (i32.load (i32.const 24))))
      (call $print (i32.const 32768) (i32.load (i32.const 24)))
      (br $more))))"""
    return _module(body, _strings())


def recurse() -> bytes:
    """Unbounded recursion: exhausts the Wasm stack."""
    body = """
  (func $r (param $n i32) (result i32) (i32.add (call $r (local.get $n)) (i32.const 1)))
  (func (export "_start") (drop (call $r (i32.const 0))))"""
    return _module(body, _strings())
