;; allow-all: the smallest valid monitor (ABI v1, docs/monitors.md).
;; Memory: [1024, 131072) is the input area the host writes records into.
(module
  (memory (export "memory") 2)
  (func (export "mn_abi_version") (result i32) i32.const 1)
  (func (export "mn_input_ptr") (result i32) i32.const 1024)
  (func (export "mn_input_size") (result i32) i32.const 130048)
  (func (export "mn_check") (param $ptr i32) (param $count i32) (result i32)
    i32.const 0))
