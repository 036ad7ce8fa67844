;; dst-allow-list: TCP only, and only to listed destinations (the PAM'25
;; Appendix B test: TCP only to a list of web servers). nopen must be proto
;; tcp with a listed dst; nsend must be on a tcp socket to a listed dst. Other
;; operations are allowed. The list is a data segment at 4096: a u32 count,
;; then 16-byte addresses (IPv4 as ::ffff:a.b.c.d). For a long list or your
;; own list, build dst-allow-list.c with `python -m marionet.guard.monitors.build
;; --allow-list FILE` (docs/monitors.md); this WAT version lists three
;; documentation addresses.
(module
  (memory (export "memory") 3)
  (data (i32.const 0) "only TCP to listed destinations\00")
  (data (i32.const 64) "destination not in the allow list\00")
  (data (i32.const 4096) "\03\00\00\00"
    "\00\00\00\00\00\00\00\00\00\00\ff\ff\c0\00\02\50"   ;; 192.0.2.80
    "\00\00\00\00\00\00\00\00\00\00\ff\ff\c6\33\64\50"   ;; 198.51.100.80
    "\20\01\0d\b8\00\00\00\00\00\00\00\00\00\00\00\80")  ;; 2001:db8::80
  (func (export "mn_abi_version") (result i32) i32.const 1)
  (func (export "mn_input_ptr") (result i32) i32.const 65536)
  (func (export "mn_input_size") (result i32) i32.const 131072)
  (func (export "mn_reason_ptr") (result i32) i32.const 128)

  ;; is the 16-byte address at $a in the list?
  (func $listed (param $a i32) (result i32)
    (local $p i32) (local $end i32) (local $hi i64) (local $lo i64)
    (local.set $hi (i64.load offset=0 (local.get $a)))
    (local.set $lo (i64.load offset=8 (local.get $a)))
    (local.set $p (i32.const 4100))
    (local.set $end (i32.add (i32.const 4100) (i32.shl (i32.load (i32.const 4096)) (i32.const 4))))
    (block $no
      (loop $scan
        (br_if $no (i32.ge_u (local.get $p) (local.get $end)))
        (if (i32.and (i64.eq (i64.load offset=0 (local.get $p)) (local.get $hi))
                     (i64.eq (i64.load offset=8 (local.get $p)) (local.get $lo)))
          (then (return (i32.const 1))))
        (local.set $p (i32.add (local.get $p) (i32.const 16)))
        (br $scan)))
    (i32.const 0))

  (func $deny (param $i i32) (param $code i32) (param $msg i32) (result i32)
    (memory.copy (i32.const 128) (local.get $msg) (i32.const 64))
    (i32.or (i32.shl (i32.add (local.get $i) (i32.const 1)) (i32.const 8)) (local.get $code)))

  (func (export "mn_check") (param $ptr i32) (param $count i32) (result i32)
    (local $i i32) (local $rec i32) (local $op i32)
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $count)))
        (local.set $rec (i32.add (local.get $ptr) (i32.mul (local.get $i) (i32.const 128))))
        (local.set $op (i32.load8_u offset=0 (local.get $rec)))
        (if (i32.or (i32.eq (local.get $op) (i32.const 1)) (i32.eq (local.get $op) (i32.const 2)))
          (then
            ;; proto must be tcp (2)
            (if (i32.ne (i32.load8_u offset=1 (local.get $rec)) (i32.const 2))
              (then (return (call $deny (local.get $i) (i32.const 1) (i32.const 0)))))
            ;; dst present (flags bit 0) and listed
            (if (i32.eqz (i32.and (i32.load8_u offset=3 (local.get $rec)) (i32.const 1)))
              (then (return (call $deny (local.get $i) (i32.const 2) (i32.const 64)))))
            (if (i32.eqz (call $listed (i32.add (local.get $rec) (i32.const 16))))
              (then (return (call $deny (local.get $i) (i32.const 2) (i32.const 64)))))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (i32.const 0)))
