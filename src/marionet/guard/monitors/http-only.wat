;; http-only: TCP to port 80 only; on each socket the first data sent must
;; start with an HTTP method (GET, HEAD, POST, PUT, DELETE, OPTIONS, PATCH)
;; and the first data received must start with "HTTP/". Per-socket state is a
;; fixed table of 64 entries {sock u32, flags u32} (flags: 1 in use, 2 first
;; send seen, 4 first receive seen), freed on nclose.
;; Layout: [0, 512) messages, [512, 600) methods, [1024, 1152) reason,
;; [8192, 8704) socket table, [65536, 196608) input.
(module
  (memory (export "memory") 3)
  (data (i32.const 0)   "only TCP to port 80\00")
  (data (i32.const 64)  "sent data is not an HTTP request\00")
  (data (i32.const 128) "received data is not an HTTP response\00")
  (data (i32.const 192) "too many sockets for http-only (64)\00")
  ;; length-prefixed prefixes, a zero length ends the list
  (data (i32.const 512) "\04GET \05HEAD \05POST \04PUT \07DELETE \08OPTIONS \06PATCH \00")
  (data (i32.const 590) "\05HTTP/\00")
  (func (export "mn_abi_version") (result i32) i32.const 1)
  (func (export "mn_input_ptr") (result i32) i32.const 65536)
  (func (export "mn_input_size") (result i32) i32.const 131072)
  (func (export "mn_reason_ptr") (result i32) i32.const 1024)

  (func $deny (param $i i32) (param $code i32) (param $msg i32) (result i32)
    (memory.copy (i32.const 1024) (local.get $msg) (i32.const 64))
    (i32.or (i32.shl (i32.add (local.get $i) (i32.const 1)) (i32.const 8)) (local.get $code)))

  ;; does data [$d, $d+$n) start with one of the prefixes listed at $list?
  (func $starts_with_any (param $d i32) (param $n i32) (param $list i32) (result i32)
    (local $len i32) (local $k i32) (local $ok i32)
    (block $none
      (loop $each
        (local.set $len (i32.load8_u (local.get $list)))
        (br_if $none (i32.eqz (local.get $len)))
        (if (i32.le_u (local.get $len) (local.get $n))
          (then
            (local.set $ok (i32.const 1))
            (local.set $k (i32.const 0))
            (block $cmp_done
              (loop $cmp
                (br_if $cmp_done (i32.ge_u (local.get $k) (local.get $len)))
                (if (i32.ne (i32.load8_u (i32.add (local.get $d) (local.get $k)))
                            (i32.load8_u (i32.add (i32.add (local.get $list) (i32.const 1)) (local.get $k))))
                  (then (local.set $ok (i32.const 0)) (br $cmp_done)))
                (local.set $k (i32.add (local.get $k) (i32.const 1)))
                (br $cmp)))
            (if (local.get $ok) (then (return (i32.const 1))))))
        (local.set $list (i32.add (local.get $list) (i32.add (local.get $len) (i32.const 1))))
        (br $each)))
    (i32.const 0))

  ;; the table entry of $sock, allocated if $create; 0 if none
  (func $slot (param $sock i32) (param $create i32) (result i32)
    (local $p i32) (local $free i32)
    (local.set $p (i32.const 8192))
    (block $end
      (loop $scan
        (br_if $end (i32.ge_u (local.get $p) (i32.const 8704)))
        (if (i32.and (i32.load offset=4 (local.get $p)) (i32.const 1))
          (then
            (if (i32.eq (i32.load (local.get $p)) (local.get $sock))
              (then (return (local.get $p)))))
          (else
            (if (i32.eqz (local.get $free)) (then (local.set $free (local.get $p))))))
        (local.set $p (i32.add (local.get $p) (i32.const 8)))
        (br $scan)))
    (if (i32.and (local.get $create) (i32.ne (local.get $free) (i32.const 0)))
      (then
        (i32.store (local.get $free) (local.get $sock))
        (i32.store offset=4 (local.get $free) (i32.const 1))
        (return (local.get $free))))
    (i32.const 0))

  (func (export "mn_check") (param $ptr i32) (param $count i32) (result i32)
    (local $i i32) (local $rec i32) (local $op i32) (local $s i32) (local $dport i32)
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $count)))
        (local.set $rec (i32.add (local.get $ptr) (i32.mul (local.get $i) (i32.const 128))))
        (local.set $op (i32.load8_u offset=0 (local.get $rec)))
        (local.set $dport (i32.load16_u offset=6 (local.get $rec)))
        (block $ok
          ;; nopen: tcp to port 80
          (if (i32.eq (local.get $op) (i32.const 1))
            (then
              (br_if $ok (i32.and (i32.eq (i32.load8_u offset=1 (local.get $rec)) (i32.const 2))
                                  (i32.eq (local.get $dport) (i32.const 80))))
              (return (call $deny (local.get $i) (i32.const 1) (i32.const 0)))))
          ;; nsend: on tcp, to port 80 (if known), first segment a request
          (if (i32.eq (local.get $op) (i32.const 2))
            (then
              (if (i32.or (i32.ne (i32.load8_u offset=1 (local.get $rec)) (i32.const 2))
                          (i32.and (i32.ne (local.get $dport) (i32.const 0))
                                   (i32.ne (local.get $dport) (i32.const 80))))
                (then (return (call $deny (local.get $i) (i32.const 1) (i32.const 0)))))
              (br_if $ok (i32.eqz (i32.load offset=48 (local.get $rec))))
              (local.set $s (call $slot (i32.load offset=12 (local.get $rec)) (i32.const 1)))
              (if (i32.eqz (local.get $s))
                (then (return (call $deny (local.get $i) (i32.const 4) (i32.const 192)))))
              (br_if $ok (i32.and (i32.load offset=4 (local.get $s)) (i32.const 2)))
              (if (i32.eqz (call $starts_with_any (i32.load offset=52 (local.get $rec))
                                                  (i32.load offset=56 (local.get $rec))
                                                  (i32.const 512)))
                (then (return (call $deny (local.get $i) (i32.const 2) (i32.const 64)))))
              (i32.store offset=4 (local.get $s) (i32.or (i32.load offset=4 (local.get $s)) (i32.const 2)))
              (br $ok)))
          ;; ndata: first segment received is a response
          (if (i32.eq (local.get $op) (i32.const 8))
            (then
              (br_if $ok (i32.eqz (i32.load offset=48 (local.get $rec))))
              (local.set $s (call $slot (i32.load offset=12 (local.get $rec)) (i32.const 1)))
              (if (i32.eqz (local.get $s))
                (then (return (call $deny (local.get $i) (i32.const 4) (i32.const 192)))))
              (br_if $ok (i32.and (i32.load offset=4 (local.get $s)) (i32.const 4)))
              (if (i32.eqz (call $starts_with_any (i32.load offset=52 (local.get $rec))
                                                  (i32.load offset=56 (local.get $rec))
                                                  (i32.const 590)))
                (then (return (call $deny (local.get $i) (i32.const 3) (i32.const 128)))))
              (i32.store offset=4 (local.get $s) (i32.or (i32.load offset=4 (local.get $s)) (i32.const 4)))
              (br $ok)))
          ;; nclose: forget the socket
          (if (i32.eq (local.get $op) (i32.const 4))
            (then
              (local.set $s (call $slot (i32.load offset=12 (local.get $rec)) (i32.const 0)))
              (if (local.get $s) (then (i32.store offset=4 (local.get $s) (i32.const 0)))))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (i32.const 0)))
