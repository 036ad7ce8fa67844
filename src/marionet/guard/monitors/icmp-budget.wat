;; icmp-budget: at most 10 ICMP/ICMPv6 sends on raw sockets (nsend, proto raw,
;; ipproto 1 or 58) per session; the counter lives in instance memory, so it
;; persists across calls. Every other event is allowed.
;; Layout: [0, 4) counter, [64, ...) message, [128, 256) reason, [1024, 131072) input.
(module
  (memory (export "memory") 2)
  (global $budget i32 (i32.const 10))
  (data (i32.const 64) "ICMP budget of 10 sends used up\00")
  (func (export "mn_abi_version") (result i32) i32.const 1)
  (func (export "mn_input_ptr") (result i32) i32.const 1024)
  (func (export "mn_input_size") (result i32) i32.const 130048)
  (func (export "mn_reason_ptr") (result i32) i32.const 128)
  (func (export "mn_check") (param $ptr i32) (param $count i32) (result i32)
    (local $i i32) (local $rec i32) (local $ipp i32)
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $count)))
        (local.set $rec (i32.add (local.get $ptr) (i32.mul (local.get $i) (i32.const 128))))
        (local.set $ipp (i32.load16_u offset=4 (local.get $rec)))
        ;; op 2 (nsend) on proto 4 (raw) with ipproto 1 or 58
        (if (i32.and
              (i32.and (i32.eq (i32.load8_u offset=0 (local.get $rec)) (i32.const 2))
                       (i32.eq (i32.load8_u offset=1 (local.get $rec)) (i32.const 4)))
              (i32.or (i32.eq (local.get $ipp) (i32.const 1))
                      (i32.eq (local.get $ipp) (i32.const 58))))
          (then
            (if (i32.ge_u (i32.load (i32.const 0)) (global.get $budget))
              (then
                (memory.copy (i32.const 128) (i32.const 64) (i32.const 64))
                (return (i32.or (i32.shl (i32.add (local.get $i) (i32.const 1)) (i32.const 8))
                                (i32.const 1)))))
            (i32.store (i32.const 0) (i32.add (i32.load (i32.const 0)) (i32.const 1)))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (i32.const 0)))
