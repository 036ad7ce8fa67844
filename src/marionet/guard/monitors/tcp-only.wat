;; tcp-only: nopen only for TCP sockets (proto tcp or tcp-listen), nsend only
;; on TCP sockets; every other operation (close, control, capture, accept,
;; received data, tasks) is allowed.
;; Layout: [0, 128) reason text, [1024, 131072) input records.
(module
  (memory (export "memory") 2)
  (data (i32.const 0) "only TCP sockets may be opened\00")
  (data (i32.const 64) "sends only on TCP sockets\00")
  (func (export "mn_abi_version") (result i32) i32.const 1)
  (func (export "mn_input_ptr") (result i32) i32.const 1024)
  (func (export "mn_input_size") (result i32) i32.const 130048)
  (func (export "mn_reason_ptr") (result i32) i32.const 128)

  ;; copy a NUL-terminated message (< 64 bytes) to the reason area
  (func $reason (param $src i32)
    (memory.copy (i32.const 128) (local.get $src) (i32.const 64)))

  (func (export "mn_check") (param $ptr i32) (param $count i32) (result i32)
    (local $i i32) (local $rec i32) (local $op i32) (local $proto i32)
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $count)))
        (local.set $rec (i32.add (local.get $ptr) (i32.mul (local.get $i) (i32.const 128))))
        (local.set $op (i32.load8_u offset=0 (local.get $rec)))
        (local.set $proto (i32.load8_u offset=1 (local.get $rec)))
        ;; op 1 = nopen: proto 2 (tcp) or 3 (tcp-listen)
        (if (i32.eq (local.get $op) (i32.const 1))
          (then
            (if (i32.and (i32.ne (local.get $proto) (i32.const 2))
                         (i32.ne (local.get $proto) (i32.const 3)))
              (then
                (call $reason (i32.const 0))
                ;; ((i + 1) << 8) | code 1
                (return (i32.or (i32.shl (i32.add (local.get $i) (i32.const 1)) (i32.const 8))
                                (i32.const 1)))))))
        ;; op 2 = nsend: proto 2 (tcp)
        (if (i32.and (i32.eq (local.get $op) (i32.const 2))
                     (i32.ne (local.get $proto) (i32.const 2)))
          (then
            (call $reason (i32.const 64))
            (return (i32.or (i32.shl (i32.add (local.get $i) (i32.const 1)) (i32.const 8))
                            (i32.const 2)))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (i32.const 0)))
